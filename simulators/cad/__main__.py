from simulators.cad.server import main

main()
