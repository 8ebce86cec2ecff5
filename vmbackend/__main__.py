import sys

from vmbackend.cli import main

sys.exit(main(sys.argv[1:]))
