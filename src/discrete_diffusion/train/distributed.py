"""Moved to :mod:`discrete_diffusion.distributed`; this module keeps old imports working."""

from ..distributed import *  # noqa: F401,F403
