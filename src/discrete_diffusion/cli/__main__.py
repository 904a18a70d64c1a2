"""``python -m discrete_diffusion.cli``: the ``ddiff`` command (also how torchrun launches it)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
