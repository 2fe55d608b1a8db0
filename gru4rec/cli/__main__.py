"""`python -m gru4rec.cli` (what torchrun launches): the same as the `gru4rec` command."""

import sys

from gru4rec.cli import main

sys.exit(main())
