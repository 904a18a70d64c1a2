"""The number of lam draws per validation example (issue 19 item 13: 4 fixed draws on a small split hid a plateau)."""

from __future__ import annotations

from discrete_diffusion.config import load_config, validation_t_samples
from discrete_diffusion.train.checks import check_train_config


def test_automatic_validation_draws_scale_with_the_split():
    assert load_config(None).train.eval_t_samples is None                 # new runs: automatic
    assert validation_t_samples(None, 600, 4) == 28                       # a 4-site table, 600 validation rows
    assert validation_t_samples(None, 2000, 4) == 9
    assert validation_t_samples(None, 150, 64) == 7                       # 8x8 digits (150 validation images)
    assert validation_t_samples(None, 10_000, 256) == 4                   # large splits keep the old 4
    assert validation_t_samples(None, 3, 1) == 64                         # at most 64
    assert validation_t_samples(4, 600, 4) == 4                           # a set number (every old run: 4) is kept


def test_eval_t_samples_still_refuses_zero():
    import pytest

    check_train_config(load_config(None))
    with pytest.raises(ValueError, match="eval_t_samples must be >= 1"):
        check_train_config(load_config(None, ["train.eval_t_samples=0"]))
