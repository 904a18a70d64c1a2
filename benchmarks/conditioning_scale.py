"""Does the noise-level embedding swamp x_t's signal ahead of a normalisation? (issue 19 item 13, the U-Net check)

Trains a run (``ddiff train`` defaults plus the given overrides; checkpoints kept every ``--every`` steps), then
for each checkpoint (raw weights) feeds one batch of validation examples noised at a shared level lam and hooks
the input X (B, ...) of every LayerNorm / GroupNorm of the backbone. Each input is centred over the axes its
norm normalises (LayerNorm: the features; GroupNorm: each group's channels and pixels), then split into the
part shared by the batch, M = mean_b X (which does not depend on x_t: the noise level's contribution and the
biases) and the x_t-dependent rest X - M. Reported per checkpoint:

- ``|emb|``: the RMS norm of the noise-level embedding vector (B, dim);
- ``x-share first`` / ``x-share min``: RMS(X - M) / RMS(M) at the first norm layer and the smallest over all
  norm layers, averaged over lam in {-2, 0, 2}. Near 0 the norm divides x_t's signal (and its gradient) away.

    PYTHONPATH=src python benchmarks/conditioning_scale.py --name unet-digits       # the default U-Net on digits
    PYTHONPATH=src python benchmarks/conditioning_scale.py --name mlp-additive \\
        data.name=array data.path=T.npy process.name=masking model.backbone=mlp model.noise_conditioning=additive
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from discrete_diffusion.config import load_config
from discrete_diffusion.denoiser import backbone_input, noise_level_input
from discrete_diffusion.pipeline import load_run
from discrete_diffusion.runs.weights import load_model_weights
from discrete_diffusion.train.trainer import Trainer


def _centred(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.GroupNorm):
        g = x.reshape(x.shape[0], module.num_groups, -1)
        return g - g.mean(-1, keepdim=True)
    return x - x.mean(-1, keepdim=True)


@torch.no_grad()
def measure(run, x0: torch.Tensor) -> dict:
    backbone = run.denoiser.backbone
    norms = [(name, m) for name, m in backbone.named_modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    shares: dict[str, list[float]] = {name: [] for name, _ in norms}
    emb_norms = []
    handles = []
    for name, module in norms:
        def hook(mod, args, name=name):
            x = _centred(mod, args[0].double())
            shared = x.mean(0, keepdim=True)
            shares[name].append(float((x - shared).pow(2).mean().sqrt() / shared.pow(2).mean().sqrt().clamp_min(1e-30)))
        handles.append(module.register_forward_pre_hook(hook))
    gen = torch.Generator().manual_seed(0)
    for lam_value in (-2.0, 0.0, 2.0):
        lam = torch.full((x0.shape[0],), lam_value)
        xt = run.process.sample_marginal(x0, lam, gen)
        level = noise_level_input(lam)
        if getattr(backbone, "noise_embedding", None) is not None:
            emb_norms.append(float(backbone.noise_embedding(level).pow(2).mean(-1).sqrt().mean()))
        backbone(backbone_input(run.process, backbone, xt, lam), level)
    for h in handles:
        h.remove()
    mean = {name: sum(v) / len(v) for name, v in shares.items() if v}
    first = norms[0][0]
    return {"emb_rms": sum(emb_norms) / len(emb_norms) if emb_norms else float("nan"),
            "share_first": mean[first], "share_min": min(mean.values()),
            "share_min_at": min(mean, key=mean.get)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--name", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"train.steps={args.steps}", f"train.checkpoint_every={args.every}", "train.keep_last=100",
                 f"train.eval_every={args.steps}", "train.sample_every=1000000", "train.device=cpu", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        Trainer(load_config(None, overrides), out, progress=False, log=lambda _: None).fit()
        run = load_run(out, "latest", "cpu")
        x0 = run.dataset.val[:64]
        for ckpt in sorted((out / "checkpoints").glob("ckpt_*.json")):
            load_model_weights(ckpt, run.denoiser, use_ema=False)
            rows.append({"step": int(ckpt.stem.split("_")[1]), **measure(run, x0)})
            r = rows[-1]
            print(f"{args.name} step {r['step']}: |emb| {r['emb_rms']:.3g}, x-share first {r['share_first']:.3g}, "
                  f"min {r['share_min']:.3g} ({r['share_min_at']})", flush=True)
    if not args.quick:
        path = Path(__file__).parent / "results" / "conditioning_scale.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old[args.name] = {"overrides": overrides, "rows": rows}
        path.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
