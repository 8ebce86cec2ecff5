import sys

from warren.run import main

sys.exit(main(sys.argv[1:]))
