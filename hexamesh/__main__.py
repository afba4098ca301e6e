from hexamesh.cli import main

main()
