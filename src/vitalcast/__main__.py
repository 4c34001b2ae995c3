from vitalcast.cli import main

main()
