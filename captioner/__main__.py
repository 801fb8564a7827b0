"""`python -m captioner` is the `captioner` command (torchrun starts it this way: `torchrun ... -m captioner`)."""

import sys

from captioner.cli import main

sys.exit(main())
