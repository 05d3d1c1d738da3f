"""`python -m realm` runs the command line (see realm.cli)."""

import sys

from .cli import main

sys.exit(main())
