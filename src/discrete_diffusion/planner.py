"""A trained noise planner for planned denoising (DDPD) under uniform noise.

Reference: Liu, Nie, Nagar, Cheng, Zhang, Wang, Jaakkola, Gómez-Bombarelli, "Think While You Generate:
Discrete Diffusion with Planned Denoising", 2024 (the planner and its cross-entropy loss).

Under uniform noise every site of x_t is, independently, noise (z = 1: a uniform value, which may equal x0)
with probability 1 - alpha, else clean (x_t = x0, z = 0); ``UniformProcess.sample_marginal_with_noise`` draws
both. The planner is a network (x_t, lam) -> logit P(z^d = 1 | x_t) for every site d, trained by binary
cross-entropy on (x_t, z) with t ~ U(0, 1) mapped through the run's schedule (the sampling grid's law of t):

    L = E_{t, x0, (x_t, z)} sum_d BCE(sigmoid(logit_d(x_t, lam)), z^d),

whose minimiser is the exact P(z^d = 1 | x_t), the quantity ``UniformProcess.noise_probability`` derives from
a denoiser. A trained planner estimates it with a network of its own, and the ``ddpd`` sampler
(``samplers/ddpd.py``) picks the sites to denoise from it.

``train_planner`` (``ddiff train-planner RUN_DIR``) trains one for a uniform-noise run on the run's data,
splits and schedule, with the run's ``model`` section as the architecture unless overridden, and writes
``config.yaml``, ``planner.safetensors`` (the best EMA weights on validation) and ``metrics.json`` into
``RUN_DIR/planner/``. The metrics compare its validation BCE with that of the planner derived from the run's
denoiser, on the same draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .baselines.fit import FitResult, FitSettings, fit_model
from .builders import build_backbone
from .config import load_config, save_config, to_dict
from .denoiser import Denoiser, backbone_input, noise_level_input
from .processes import ForwardProcess
from .schedules import Schedule
from .train.atomic_io import ensure_dir, user_dir
from .train.ema import compare_tensors

#: ``planner(x_t (B, *sites) long, lam (B,)) -> P(site is noise | x_t) (B, *sites)``, as the ddpd sampler takes it.
Planner = Callable[[Tensor, Tensor], Tensor]

PLANNER_WEIGHTS = "planner.safetensors"
#: The run's sections a planner must share: it models the noise of that data under that process.
SHARED_SECTIONS = ("data", "process")


class NoisePlanner(nn.Module):
    """A backbone (features (B, C_in, *sites), noise level (B,)) -> (B, 1, *sites) on the uniform process's
    input features; ``forward`` returns P(site is noise | x_t)."""

    def __init__(self, backbone: nn.Module, process: ForwardProcess) -> None:
        super().__init__()
        if process.name != "uniform":
            raise ValueError(f"a trained planner is for uniform noise, got process {process.name!r} (under masking "
                             "the noisy sites are the masked ones: the ddpd sampler needs no planner there)")
        self.backbone = backbone
        self.process = process

    def logits(self, xt: Tensor, lam: Tensor) -> Tensor:
        """logit P(z = 1 | x_t) per site: (B, *sites) float32."""
        output = self.backbone(backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam))
        return output[:, 0].float()

    def forward(self, xt: Tensor, lam: Tensor) -> Tensor:
        """P(site is noise | x_t): (B, *sites) float64."""
        return torch.sigmoid(self.logits(xt, lam).double())


def denoiser_planner(process: ForwardProcess, denoiser: Denoiser) -> Planner:
    """The ddpd sampler's default planner: P(noise | x_t) derived from the denoiser's p(x0 | x_t)."""
    return lambda xt, lam: process.noise_probability(xt, denoiser(xt, lam), lam)


def draw_noise_indicators(process: ForwardProcess, schedule: Schedule, x0: Tensor,
                          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """t ~ U(0, 1) per example, lam = logit alpha(t), and (x_t, z) ~ q_t(. | x0): ((B, *sites), (B, *sites) bool,
    (B,) float64)."""
    t = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
    lam = torch.logit(schedule.alpha(t).clamp(0.0, 1.0))
    xt, is_noise = process.sample_marginal_with_noise(x0, lam, generator)
    return xt, is_noise, lam


@torch.no_grad()
def planner_bits_per_site(planner: Planner, process: ForwardProcess, schedule: Schedule, data: Tensor, seed: int,
                          batch_size: int = 256) -> float:
    """Mean BCE of ``planner`` on the noise indicators of (x_t, z) drawn from ``data`` (N, *sites), in bits per
    site. The draws depend on ``seed`` only, so two planners scored with one seed see the same draws."""
    generator = torch.Generator(device=data.device).manual_seed(seed)
    total = 0.0
    for start in range(0, data.shape[0], batch_size):
        xt, is_noise, lam = draw_noise_indicators(process, schedule, data[start:start + batch_size], generator)
        p = planner(xt, lam).double().clamp(1e-12, 1.0 - 1e-12)
        total += float(-torch.where(is_noise, p.log(), (-p).log1p()).sum())
    return total / (data.numel() * math.log(2.0))


def fit_planner(planner: NoisePlanner, schedule: Schedule, train: Tensor, val: Tensor, settings: FitSettings,
                weights_path: str | Path, progress: bool = False,
                log: Callable[[str], None] = lambda _message: None) -> FitResult:
    """Train ``planner`` (already on its device) by BCE on draws from ``train`` (N, *sites) with the Trainer's
    recipe (``baselines.fit_model``); validation scores the EMA weights on fixed draws from ``val``."""
    if train.shape[0] == 0 or val.shape[0] == 0:
        raise ValueError(f"fit_planner needs non-empty train and val splits, got {train.shape[0]} and "
                         f"{val.shape[0]} examples")
    device = next(planner.parameters()).device
    train, val = train.to(device), val.to(device)
    generator = torch.Generator(device=device).manual_seed(settings.seed + 2)

    def batch_loss(index: Tensor) -> Tensor:
        xt, is_noise, lam = draw_noise_indicators(planner.process, schedule, train[index], generator)
        return F.binary_cross_entropy_with_logits(planner.logits(xt, lam), is_noise.float())

    def validate() -> float:
        return planner_bits_per_site(planner, planner.process, schedule, val, settings.seed + 3)

    return fit_model(planner, batch_loss, validate, train.shape[0], settings, weights_path, progress, log,
                     desc="train planner (BCE)")


def train_planner(run_dir: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
                  device: str = "auto", progress: bool = True) -> dict:
    """Train a planner for the uniform-noise run at ``run_dir`` and write it to ``out_dir`` (default
    ``RUN_DIR/planner``). ``overrides`` (``model.*`` and ``train.*`` only) change the run's config for the
    planner. Returns the metrics written to ``metrics.json``."""
    from .pipeline import load_run, write_json

    run_dir = Path(run_dir)
    run = load_run(run_dir, "best", device)
    if run.process.name != "uniform":
        raise ValueError(f"run {run_dir} uses the {run.process.name!r} process; a trained planner is for uniform "
                         "noise (under masking the noisy sites are the masked ones)")
    config = load_config(run_dir / "config.yaml", overrides)
    for section in to_dict(config):
        if section not in ("model", "train") and to_dict(config)[section] != to_dict(run.config)[section]:
            raise ValueError(f"a planner is trained on its run's data and process: override only model.* and "
                             f"train.* keys, not {section}.*")
    out = user_dir(run_dir) / "planner" if out_dir is None else user_dir(out_dir)
    ensure_dir(out)  # a symbolic link at RUN_DIR/planner (or at a file in it) is never written through
    save_config(config, out / "config.yaml")
    torch.manual_seed(config.train.seed)
    backbone = build_backbone(config, run.process, run.dataset.site_shape, out_channels=1)
    planner = NoisePlanner(backbone, run.process).to(run.device)
    settings = FitSettings.from_train_config(config.train)
    result = fit_planner(planner, run.schedule, run.dataset.train, run.dataset.val, settings, out / PLANNER_WEIGHTS,
                         progress, log=print if progress else (lambda _message: None))
    derived = planner_bits_per_site(denoiser_planner(run.process, run.denoiser), run.process, run.schedule,
                                    run.dataset.val.to(run.device), settings.seed + 3)
    metrics = {"val_bce_bits_per_site": result.best_val_bits_per_dim, "denoiser_planner_val_bce_bits_per_site": derived,
               "best_step": result.best_step, "steps_done": result.steps_done,
               "train_seconds": round(result.train_seconds, 1), "val_curve": result.val_curve,
               "parameters": sum(p.numel() for p in planner.parameters()), "run_dir": str(run_dir.resolve()),
               "run_checkpoint": str(run.checkpoint), "weights": str(out / PLANNER_WEIGHTS)}
    write_json(out / "metrics.json", metrics)
    return metrics


def load_planner(planner_dir: str | Path, run) -> NoisePlanner:
    """The planner written by ``train_planner`` into ``planner_dir``, for ``run`` (a ``pipeline.LoadedRun`` with
    the same data and process sections), on the run's device in eval mode. Reads YAML and safetensors only."""
    planner_dir = Path(planner_dir)
    weights = planner_dir / PLANNER_WEIGHTS
    if not (planner_dir / "config.yaml").is_file() or not weights.is_file():
        raise ValueError(f"{planner_dir} is not a planner directory (expected config.yaml and {PLANNER_WEIGHTS}, "
                         "written by `ddiff train-planner RUN_DIR`)")
    config = load_config(planner_dir / "config.yaml")
    for section in SHARED_SECTIONS:
        if to_dict(config)[section] != to_dict(run.config)[section]:
            raise ValueError(f"the planner in {planner_dir} was trained for another run: its {section} section "
                             f"differs from the run's")
    planner = NoisePlanner(build_backbone(config, run.process, run.dataset.site_shape, out_channels=1), run.process)
    try:
        state = load_file(str(weights))
    except Exception as err:  # a truncated or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read planner weights {weights}: {first}") from None
    problems = compare_tensors(planner.state_dict(), state)
    if problems:
        raise ValueError(f"planner weights {weights} do not match its config.yaml: " + "; ".join(problems))
    planner.load_state_dict(state)
    return planner.to(run.device).eval()
