"""Moved to :mod:`discrete_diffusion.runs.results`; this module keeps old imports working."""

from ..runs.results import *  # noqa: F401,F403
