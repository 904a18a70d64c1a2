"""Moved to :mod:`discrete_diffusion.runs.lock`; this module keeps old imports working."""

from ..runs.lock import *  # noqa: F401,F403
