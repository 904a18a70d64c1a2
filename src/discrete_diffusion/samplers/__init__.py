"""Samplers (one file each) and their registry."""

from __future__ import annotations

from .base import ProgressCallback, Sampler
from .bridge import BridgeSampler
from .confidence import ConfidenceSampler
from .ddpd import PlannedDenoisingSampler
from .euler import EulerSampler
from .exact import ExactSimulationSampler, TwoTermThinningSampler
from .mean_bridge import MeanBridgeSampler
from .remdm import ReMDMSampler
from .tau_leaping import TauLeapingSampler
from .theta_rk2 import ThetaRK2Sampler
from .theta_trapezoidal import ThetaTrapezoidalSampler

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (BridgeSampler, MeanBridgeSampler, TauLeapingSampler, ExactSimulationSampler,
                              EulerSampler, ThetaTrapezoidalSampler, ThetaRK2Sampler, ReMDMSampler,
                              ConfidenceSampler, TwoTermThinningSampler, PlannedDenoisingSampler)
}


def build_sampler(name: str, **options) -> Sampler:
    """Build a sampler by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    try:
        return SAMPLERS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for sampler {name!r}: {err}") from None


__all__ = ["Sampler", "ProgressCallback", "SAMPLERS", "build_sampler", "BridgeSampler", "MeanBridgeSampler",
           "TauLeapingSampler", "ExactSimulationSampler", "EulerSampler", "ThetaTrapezoidalSampler",
           "ThetaRK2Sampler", "ReMDMSampler", "ConfidenceSampler", "TwoTermThinningSampler",
           "PlannedDenoisingSampler"]
