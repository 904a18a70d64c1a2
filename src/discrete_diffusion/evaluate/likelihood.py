"""Moved to :mod:`discrete_diffusion.likelihood`; this module keeps old imports working."""

from ..likelihood import *  # noqa: F401,F403
