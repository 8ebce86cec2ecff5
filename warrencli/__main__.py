import sys

from warrencli.main import main

sys.exit(main())
