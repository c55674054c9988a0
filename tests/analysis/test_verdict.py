import numpy as np
import pytest

from sae_fast.analysis.bootstrap import seed_bootstrap
from sae_fast.analysis.verdict import (
    CLAIMS,
    CONTRADICTED,
    NOT_MEASURED,
    SUPPORTED,
    UNDERPOWERED,
    ClaimRow,
    markdown,
    verdict,
    verdict_table,
)
from sae_fast.errors import UsageError


def _row(lo, hi, power=float("nan"), direction=1, null=0.0):
    return ClaimRow("subspaces", "excess", (lo + hi) / 2, lo, hi, null, "outside null", direction, power)


def test_verdict_rule():
    assert verdict(_row(0.1, 0.3)) == SUPPORTED
    assert verdict(_row(-0.3, -0.1)) == CONTRADICTED
    assert verdict(_row(-0.3, -0.1, direction=-1)) == SUPPORTED
    assert verdict(_row(-0.1, 0.2, power=0.3)) == UNDERPOWERED
    assert verdict(_row(-0.1, 0.2)) == UNDERPOWERED  # unknown power is not evidence against
    assert verdict(_row(-0.1, 0.2, power=0.95)) == CONTRADICTED
    assert verdict(_row(0.5, 0.9, null=1.0, direction=-1)) == SUPPORTED  # e.g. a frequency ratio below 1
    with pytest.raises(UsageError, match="direction"):
        verdict(_row(0, 1, direction=0))


def test_planted_effects_get_the_right_verdicts():
    rng = np.random.default_rng(0)
    strong = seed_bootstrap(rng.normal(0.2, 0.05, 8), n_boot=500)
    flat = rng.normal(0.0, 0.05, 8)
    none = seed_bootstrap(flat - flat.mean(), n_boot=500)  # no effect: mean exactly 0
    rows = [ClaimRow("subspaces", "excess", *strong[:3], 0.0, "null", 1, 0.9),
            ClaimRow("rank", "ER/d difference", *none[:3], 0.0, "no difference", -1, 0.2)]
    table = verdict_table(rows)
    assert [t["key"] for t in table] == list(CLAIMS)
    got = {t["key"]: t["verdict"] for t in table}
    assert got["subspaces"] == SUPPORTED and got["rank"] == UNDERPOWERED and got["pooling"] == NOT_MEASURED
    text = markdown(table)
    assert text.count("\n") == len(CLAIMS) + 1 and "supported" in text


def test_a_broken_side_condition_contradicts_the_claim():
    """Pooling's claim is 'stabler at equal EV': a clear p̂ gain with a large EV loss is not support."""
    gain = ClaimRow("pooling", "p̂ gain", 0.02, 0.01, 0.03, 0.0, "no gain", 1)
    assert verdict(gain) == SUPPORTED
    broken = ClaimRow("pooling", "p̂ gain", 0.02, 0.01, 0.03, 0.0, "no gain", 1, failed="EV not preserved")
    assert verdict(broken) == CONTRADICTED
    assert verdict_table([broken])[-1]["verdict"] == CONTRADICTED
