"""``python -m edgecall``: same as the ``edgecall`` console script."""

import sys

from edgecall.cli import main

if __name__ == "__main__":
    sys.exit(main())
