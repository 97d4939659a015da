"""``python -m mechtox`` (and ``torchrun ... -m mechtox train ...``): the command line."""

import sys

from mechtox.cli import main

sys.exit(main())
