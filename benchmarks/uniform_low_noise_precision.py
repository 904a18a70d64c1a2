"""Relative error of the uniform process's noise probability pi = (1 - p_x) + p_x / (1 + g) at the low-noise end.

K = 256, lam = 15, float32 network logits (standard normal times 3, 4 x 2048 sites): ``noise_probability`` on the
prediction of ``prediction_from_output`` against a float64 evaluation of the definition
p = softmax(l + log(1 + g) 1[x0 = x_t]). It feeds DDPD's derived planner and every uniform leap.

    python benchmarks/uniform_low_noise_precision.py

Prints one line; no files written.
"""

from __future__ import annotations

import math

import torch

from discrete_diffusion.processes import UniformProcess

K, LAM = 256, 15.0


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, K, 2048, generator=gen) * 3.0
    xt = torch.randint(0, K, (4, 2048), generator=gen)
    lam = torch.full((4,), LAM)
    proc = UniformProcess(K)
    pred = proc.prediction_from_output(logits, xt, lam, "logits")
    g = K * math.exp(LAM)
    boosted = logits.double().movedim(1, -1) + math.log1p(g) * torch.nn.functional.one_hot(xt, K).double()
    probs = torch.softmax(boosted, dim=-1)
    p_x = torch.gather(probs, -1, xt[..., None])[..., 0]
    rest = probs.scatter(-1, xt[..., None], 0.0).sum(-1)
    expected = rest + p_x / (1 + g)
    rel = (proc.noise_probability(xt, pred, lam) - expected).abs() / expected
    print(f"K = {K}, lam = {LAM}: noise_probability relative error against float64: median {float(rel.median()):.3g}, "
          f"max {float(rel.max()):.3g}")


if __name__ == "__main__":
    main()
