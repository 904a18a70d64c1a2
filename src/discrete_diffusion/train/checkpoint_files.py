"""Moved to :mod:`discrete_diffusion.runs.checkpoint_files`; this module keeps old imports working."""

from ..runs.checkpoint_files import *  # noqa: F401,F403
