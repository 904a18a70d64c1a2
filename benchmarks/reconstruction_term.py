"""How large the ELBO's t -> 0 reconstruction term can be: H(x0 | x_{t0}) in bits per dimension at alpha(0).

The reconstruction term -log p_model(x0 | x_{t0}) is at least the conditional entropy H(x0 | x_{t0}) (equal for an
exact denoiser), so this entropy is what ``training_loss(reconstruction=False)`` leaves out of the bound. It is
computed exactly by enumeration over the K x K table q(x_{t0} | x0) at lam0 = logit(alpha(0)). Of the shipped
schedules only Blackout's has alpha(0) < 1 (1 - alpha(0) = 3.1e-7 at t_end = 15); x0 is uniform over the K values.

    python benchmarks/reconstruction_term.py            # K = 256 (8-bit data) and K = 17 (the digits)

Prints a markdown table; no files written.
"""

from __future__ import annotations

import math

import torch

from discrete_diffusion.processes import build_process
from discrete_diffusion.schedules import build_schedule


def conditional_entropy_bits(log_q: torch.Tensor, log_prior: torch.Tensor) -> float:
    """H(x0 | x_t) in bits for x0 ~ prior (K,) and log q(x_t | x0) (K, M), both float64 log-probabilities."""
    log_joint = log_prior[:, None] + log_q                                        # (K, M)
    log_post = log_joint - torch.logsumexp(log_joint, dim=0, keepdim=True)        # log p(x0 | x_t)
    terms = torch.where(torch.isfinite(log_joint), log_joint.exp() * log_post, torch.zeros_like(log_joint))
    return float(-terms.sum()) / math.log(2.0)


def main() -> None:
    schedule = build_schedule("blackout")
    alpha0 = schedule.alpha_max
    lam0 = torch.logit(torch.tensor([alpha0], dtype=torch.float64))
    for name in ("log-linear", "cosine", "linear"):
        gap = 1.0 - build_schedule(name).alpha_max
        print(f"{name}: 1 - alpha(0) = {gap:.3g} (no reconstruction term)")
    print(f"blackout (t_end = 15): 1 - alpha(0) = {1.0 - alpha0:.3g}\n")
    print("| K (levels) | x0 | H(x0 \\| x_t0), bits/dim |")
    print("|---|---|---|")
    for k in (256, 17):
        log_q = build_process("blackout", k).log_marginal_matrix(lam0)[0]          # (K, K)
        uniform = torch.full((k,), -math.log(k), dtype=torch.float64)
        print(f"| {k} | uniform over 0..{k - 1} | {conditional_entropy_bits(log_q, uniform):.3g} |")


if __name__ == "__main__":
    main()
