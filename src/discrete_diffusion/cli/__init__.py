"""The ``ddiff`` command line: one module per subcommand, the parser tree in :mod:`.parser`."""

from .main import main

__all__ = ["main"]
