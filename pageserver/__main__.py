from pageserver.server import main

main()
