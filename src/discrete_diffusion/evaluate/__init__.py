"""Evaluation: likelihood in bits per dimension (``likelihood``) and sample quality (``quality``: the family
dispatcher; ``image_quality``, ``feature_metrics``, ``count_quality``; docs/quality.md)."""

from ..likelihood import LikelihoodResult, evaluate_nll

__all__ = ["LikelihoodResult", "evaluate_nll"]
