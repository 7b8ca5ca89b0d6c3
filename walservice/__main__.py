from walservice.server import main

main()
