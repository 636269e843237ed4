"""`python -m ptycho_dist.cli ...` = `ptycho-dist ...` (job entrypoints without the console script)."""

import sys

from ptycho_dist.cli import main

sys.exit(main())
