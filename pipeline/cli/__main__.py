"""`python -m pipeline.cli` runs the tokenmeter command line."""

import sys

from pipeline.cli import main

sys.exit(main())
