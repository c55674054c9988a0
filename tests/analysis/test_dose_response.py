import numpy as np
import pytest

from sae_fast.analysis.calibration import PlantedStudy, planted_study
from sae_fast.analysis.dose_response import bin_masks, dose_response
from sae_fast.analysis.stability import anchor_scores
from sae_fast.errors import UsageError


def _run(share: float, by: str = "p_hat"):
    pl = planted_study(PlantedStudy(num_seeds=4, n_stable=120, n_unstable=64, grouped_share=share, seed=1))
    p = anchor_scores(pl.decoders).p_hat
    res = dose_response(pl.decoders, p, np.stack(pl.freqs), by=by, ranks=(4,), max_n=24, null_draws=20,
                        set_draws=2, n_boot=200)
    return res, pl, p


def test_dose_response_finds_planted_groups_in_their_bins():
    res, pl, p = _run(0.9)
    used = [b for b in res["bins"] if not b["skipped"]]
    assert len(used) >= 2
    # the bin holding most grouped latents has an excess whose seed-bootstrap interval is above 0
    grouped_p = p[0, pl.grouped[0]]
    centre = np.median(grouped_p)
    best = min(used, key=lambda b: abs(b["centre"] - centre))
    assert best["ranks"][4]["excess_lo"] > 0 and best["ranks"][4]["p_value"] <= 0.05


def test_dose_response_negative_control_has_no_excess():
    res, _, _ = _run(0.0)
    used = [b for b in res["bins"] if not b["skipped"]]
    assert used
    assert all(b["ranks"][4]["excess"] < 0.1 for b in used)


def test_bins_and_checks():
    v = np.array([[0.0, 0.05, 0.5, 1.0]])
    masks = bin_masks(v, np.array([0.0, 0.05, 0.95, 1.0]))
    assert [m.sum() for m in masks] == [1, 2, 1]
    with pytest.raises(UsageError, match="by must be"):
        dose_response([np.eye(4)] * 2, np.zeros((2, 4)), np.zeros((2, 4)), by="size")
