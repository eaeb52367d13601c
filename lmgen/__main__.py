from lmgen.cli import main

main()
