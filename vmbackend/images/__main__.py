import sys

from vmbackend.images_cli import main

sys.exit(main(sys.argv[1:]))
