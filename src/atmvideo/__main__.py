"""Allow ``python -m atmvideo`` (and ``torchrun -m atmvideo``) to run the command line."""

import sys

from atmvideo.cli import main

sys.exit(main())
