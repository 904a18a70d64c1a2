"""Moved to :mod:`discrete_diffusion.runs.atomic_io`; this module keeps old imports working."""

from ..runs.atomic_io import *  # noqa: F401,F403
