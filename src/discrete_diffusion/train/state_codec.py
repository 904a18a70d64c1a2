"""Moved to :mod:`discrete_diffusion.runs.state_codec`; this module keeps old imports working."""

from ..runs.state_codec import *  # noqa: F401,F403
