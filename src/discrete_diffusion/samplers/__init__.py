"""Samplers (one file each) and their registry."""

from __future__ import annotations

import inspect
from typing import Any

from .base import ProgressCallback, Sampler, check_top_k
from .bridge import BridgeSampler
from .confidence import ConfidenceSampler
from .ddpd import PlannedDenoisingSampler
from .euler import EulerSampler
from .exact import ExactSimulationSampler, TwoTermThinningSampler
from .exact_window import WindowThinningSampler
from .factor import FactorSampler
from .mean_bridge import MeanBridgeSampler
from .remdm import ReMDMSampler
from .tau_leaping import TauLeapingSampler
from .theta_rk2 import ThetaRK2Sampler
from .theta_trapezoidal import ThetaTrapezoidalSampler
from .threshold import ThresholdSampler

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (BridgeSampler, MeanBridgeSampler, TauLeapingSampler, ExactSimulationSampler,
                              EulerSampler, ThetaTrapezoidalSampler, ThetaRK2Sampler, ReMDMSampler,
                              ConfidenceSampler, TwoTermThinningSampler, WindowThinningSampler,
                              PlannedDenoisingSampler, ThresholdSampler, FactorSampler)
}

#: Options of the base Sampler that every sampler honours even where its constructor does not list them.
BASE_OPTIONS = ("top_k",)


def build_sampler(name: str, **options: Any) -> Sampler:
    """Build a sampler by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    accepted = [p for p in inspect.signature(SAMPLERS[name].__init__).parameters if p != "self"]
    # every sampler honours top_k (the base applies it); one whose constructor does not list it gets it set after
    late = {key: options.pop(key) for key in BASE_OPTIONS if key in options and key not in accepted}
    accepted += [key for key in BASE_OPTIONS if key not in accepted]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(accepted)}")
    try:
        sampler = SAMPLERS[name](**options)
        if "top_k" in late:
            sampler.top_k = check_top_k(late["top_k"], name)
        return sampler
    except (TypeError, ValueError) as err:   # e.g. theta="abc": say which sampler and options
        raise ValueError(f"bad options for sampler {name!r} {dict(options, **late)}: {err}") from None


__all__ = ["Sampler", "ProgressCallback", "SAMPLERS", "build_sampler", "BridgeSampler", "MeanBridgeSampler",
           "TauLeapingSampler", "ExactSimulationSampler", "EulerSampler", "ThetaTrapezoidalSampler",
           "ThetaRK2Sampler", "ReMDMSampler", "ConfidenceSampler", "TwoTermThinningSampler", "WindowThinningSampler",
           "PlannedDenoisingSampler", "ThresholdSampler", "FactorSampler"]
