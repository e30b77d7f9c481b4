from simulators.oneroster.server import main

main()
