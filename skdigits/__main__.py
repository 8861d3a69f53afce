"""``python -m skdigits`` is the ``skdigits`` command."""

import sys

from .cli import main

sys.exit(main())
