from dsmix_cli.cli import main

main()
