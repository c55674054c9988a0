"""`python -m sae_fast` runs the `sae-fast` command."""

import sys

from .cli import main

sys.exit(main())
