"""``python -m retinopathy``: the same command as ``retinopathy``."""

import sys

from retinopathy.cli import main

if __name__ == "__main__":
    sys.exit(main())
