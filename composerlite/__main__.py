import sys

from composerlite.cli import main

sys.exit(main())
