"""Evaluation: likelihood in bits per dimension."""

from .likelihood import LikelihoodResult, evaluate_nll

__all__ = ["LikelihoodResult", "evaluate_nll"]
