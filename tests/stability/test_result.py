"""The one endpoint split: the same labels from a tensor or an array, float32 p_hat at the boundary, checked
ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_fast.analysis.stability import split
from sae_fast.errors import UsageError
from sae_fast.stability import NEITHER, STABLE, UNSTABLE, Stability, split_labels


def test_tensor_and_array_give_the_same_labels() -> None:
    p = np.array([0.0, 0.04, 0.05, 0.5, 0.95, 1.0])
    want = [UNSTABLE, UNSTABLE, UNSTABLE, NEITHER, STABLE, STABLE]
    assert split_labels(p, 0.05).tolist() == want
    assert split_labels(torch.tensor(p, dtype=torch.float32), 0.05).tolist() == want
    assert split(p, 0.05).tolist() == want


def test_float32_p_hat_on_the_boundary_is_stable() -> None:
    """21 seeds: a feature matched in 19 of the 20 others has p_hat = 0.95, which float32 rounds down."""
    num_seeds, f = 21, 3
    best = torch.full((1, num_seeds, f), 0.9)
    best[0, 0] = math.nan  # the anchor itself
    best[0, 1, 0] = 0.1  # feature 0: 19 of 20 matched -> p_hat 0.95 -> stable at eps 0.05
    best[0, 1:, 1] = 0.1  # feature 1: none matched -> unstable
    best[0, 1:20, 2] = 0.1  # feature 2: 1 of 20 -> p_hat 0.05 -> unstable
    done = torch.ones(1, num_seeds, dtype=torch.bool)
    done[0, 0] = False
    st = Stability(best, torch.zeros(1, num_seeds, f, dtype=torch.int32), done, [0],
                   [str(s) for s in range(num_seeds)])
    assert float(st.p_hat()[0, 0]) < 0.95  # the float32 rounding the split must absorb
    assert st.split(eps=0.05)[0].tolist() == [STABLE, UNSTABLE, UNSTABLE]


@pytest.mark.parametrize("eps", [0.5, 0.9, -0.1])
def test_eps_out_of_range_is_refused(eps: float) -> None:
    with pytest.raises(UsageError, match="eps must be in"):
        split_labels(np.array([0.5]), eps)
    with pytest.raises(ValueError, match="p_hat must lie in"):
        split_labels(np.array([1.5]), 0.05)
