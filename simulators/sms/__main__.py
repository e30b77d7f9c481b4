from simulators.sms.server import main

main()
