"""`python -m wanmoe ...` runs the `wanmoe` command."""

import sys

from wanmoe.cli import main

if __name__ == "__main__":
    sys.exit(main())
