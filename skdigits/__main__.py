"""``python -m skdigits`` is the ``skdigits`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
