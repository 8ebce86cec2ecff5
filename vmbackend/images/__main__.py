import sys

from vmbackend.images.cli import main

sys.exit(main(sys.argv[1:]))
