"""``python -m diffode``: the command line (see :mod:`diffode.cli`)."""

import sys

from diffode.cli import main

sys.exit(main())
