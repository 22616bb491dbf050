"""``python -m canlib <command>``: the command line lives in :mod:`canlib.cli`."""

import sys

from canlib.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
