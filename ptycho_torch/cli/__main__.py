"""`python -m ptycho_torch.cli ...` = `ptycho-torch ...`."""

import sys

from ptycho_torch.cli.main import main

sys.exit(main())
