"""``python -m genbound``: the ``genbound`` command (also what ``torchrun -m genbound`` starts)."""

import sys

from .cli import main

if __name__ == "__main__":  # imported, not run (a package walk): nothing happens
    sys.exit(main())
