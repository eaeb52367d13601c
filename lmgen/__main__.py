from lmgen.cli.main import main

main()
