"""``python -m kerzoo`` is the ``kerzoo`` command (so ``torchrun -m kerzoo train CONFIG`` works)."""

import sys

from .cli import main

sys.exit(main())
