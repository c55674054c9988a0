"""The verdict step's pooling row: 'stabler SAEs at equal EV' needs both the p̂ gain and the EV."""

from types import SimpleNamespace

from sae_fast.analysis.verdict import CONTRADICTED, SUPPORTED, verdict
from sae_fast.study.steps.verdict import _pooling


def _results(ev_pooled: float) -> dict:
    pooling = {"pooled": {"p_hat_mean": 0.5, "ev": ev_pooled}, "single_ev_mean": 0.77,
               "single": [{"p_hat_mean": p} for p in (0.30, 0.32, 0.31, 0.29, 0.33)]}
    return {"pooling": SimpleNamespace(entries={"pooling": pooling})}


def test_pooling_at_equal_ev_is_supported_and_with_an_ev_loss_contradicted():
    kept = _pooling(_results(0.765), n_boot=500, seed=0, ev_tolerance=0.01)
    assert kept.lo > 0 and verdict(kept) == SUPPORTED
    lost = _pooling(_results(0.514), n_boot=500, seed=0, ev_tolerance=0.01)
    assert lost.lo > 0 and verdict(lost) == CONTRADICTED  # same p̂ gain, 0.256 of EV lost
    assert "EV not preserved" in lost.metric
