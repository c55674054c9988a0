"""The masking step's per-seed ΔEV contrasts and their seed-bootstrap interval, on planted seeds where the cost of
masking each latent is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_fast.analysis._common import STABLE, UNSTABLE
from sae_fast.checkpoint import save_sae
from sae_fast.errors import UsageError
from sae_fast.sae import TopKSAE

D, SHARED, S = 40, 8, 5


def _planted(root, rows: int = 2000):
    """S seeds of D orthonormal latents (encoder = decoder, zero biases, k = D): SHARED common directions that carry
    most of the variance (stable) and a seed's own random basis of the rest (unstable), in a per-seed order.

    With an orthonormal dictionary, zeroing a set A after encoding costs exactly Σ_{j∈A} Σ_rows relu(<x, w_j>)² / total
    of EV, so the planted per-seed contrast is known for every seed. Returns (run, x, per-seed decoders, truth)."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    common, rest = basis[:, :SHARED].T, basis[:, SHARED:]
    scale = np.concatenate([np.linspace(2.0, 4.0, SHARED), np.ones(D - SHARED)])
    x = (rng.standard_normal((rows, D)) * scale) @ basis.T
    decs, truth = [], []
    for s in range(S):
        own = (rest @ np.linalg.qr(rng.standard_normal((D - SHARED, D - SHARED)))[0]).T
        order = rng.permutation(D)
        dec = np.concatenate([common, own])[order]
        decs.append(dec)
        truth.append(np.where(order < SHARED, STABLE, UNSTABLE))
        sae = TopKSAE(D, D, D, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(dec, dtype=torch.float32))
        save_sae(sae, root / "run" / f"seed{s}")
    return root / "run", torch.as_tensor(x, dtype=torch.float32), decs, np.stack(truth)


def _expected_contrast(x: np.ndarray, dec: np.ndarray, labels: np.ndarray) -> float:
    """ΔEV(all SHARED stable) − ΔEV(all 4·SHARED unstable) of the orthonormal SAE ``dec`` (the module docstring)."""
    cost = (np.maximum(x @ dec.T, 0.0) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum()
    return float(cost[labels == STABLE].sum() - cost[labels == UNSTABLE].sum())


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory):
    from sae_fast import study
    from sae_fast.study.config import StudyConfig
    from sae_fast.study.steps.firing import FiringStep
    from sae_fast.study.steps.masking import MaskingStep
    from sae_fast.study.steps.matching import MatchingStep
    from sae_fast.study.steps.stability import StabilityStep
    from sae_fast.study.steps.verdict import VerdictStep

    tmp = tmp_path_factory.mktemp("masking")
    run, x, decs, truth = _planted(tmp)
    plan = [MatchingStep(), StabilityStep(), FiringStep(), MaskingStep(),
            VerdictStep(requires=("stability", "firing", "masking"))]
    res = study(run, activations=x, out_dir=tmp / "study", progress=False, steps=plan,
                config=StudyConfig(ratio=4, n_random=2, splice_texts=0, anchor=1))
    return res, x.double().numpy(), decs, truth, tmp


def test_each_seed_is_masked_with_its_own_labels_and_the_interval_covers_the_planted_mean(planted_study):
    res, x, decs, truth, _ = planted_study
    per_seed = res["masking"]["per_seed"]
    assert [e["seed"] for e in per_seed] == [1, 2, 3, 4, 0]  # the anchor first, every seed once
    expected = {s: _expected_contrast(x, decs[s], truth[s]) for s in range(S)}
    assert max(expected.values()) - min(expected.values()) > 1e-3  # seeds differ: an interval of real width
    for e in per_seed:
        assert e["n"] == SHARED  # n stable = every stable latent, 4n unstable = every unstable one: no draw
        assert e["stable_vs_unstable"] == pytest.approx(expected[e["seed"]], rel=1e-4)
        assert e["stable_vs_random"] > 0 and e["unstable_vs_random"] < 0
    # the anchor's full result stays as it was, its per-seed entry read from it
    anchor = res["masking"]["delta_ev"]
    assert per_seed[0]["stable_vs_unstable"] == pytest.approx(anchor["stable_n"] - anchor["unstable_4n"])
    planted_mean = float(np.mean(list(expected.values())))
    ivs = {r["name"]: r for r in res["verdict_intervals"]}
    ci = ivs["ΔEV(n stable) − ΔEV(ratio·n unstable)"]
    assert ci["unit"] == "seed" and ci["lo"] <= planted_mean <= ci["hi"] and ci["hi"] - ci["lo"] > 1e-4
    assert ci["estimate"] == pytest.approx(planted_mean, rel=1e-4)
    assert ivs["ΔEV(n stable) − ΔEV(random, same size)"]["lo"] > 0
    assert "anchor seed only" in ivs["ΔEV stable (anchor)"]["reason"]
    row = {r["key"]: r for r in res["verdict"]}["function"]
    assert row["lo"] <= planted_mean <= row["hi"] and row["lo"] > 0 and row["verdict"] == "supported"
    assert "5 seeds masked" in row["metric"]


def test_masking_seeds_limits_the_seeds_and_is_checked(planted_study):
    from sae_fast import study
    from sae_fast.study.config import StudyConfig

    x, tmp = planted_study[1], planted_study[4]
    two = study(tmp / "run", activations=torch.as_tensor(x, dtype=torch.float32), out_dir=tmp / "two",
                progress=False, only=["masking"], synthetic=False,
                config=StudyConfig(ratio=4, n_random=2, splice_texts=0, anchor=3, masking_seeds=2))
    assert [e["seed"] for e in two["masking"]["per_seed"]] == [3, 4]
    assert "ΔEV contrasts per seed" in (tmp / "two" / "report.md").read_text()
    with pytest.raises(UsageError, match="masking_seeds"):
        study(tmp / "run", activations=torch.as_tensor(x, dtype=torch.float32), out_dir=tmp / "three",
              progress=False, only=["masking"], synthetic=False, config=StudyConfig(masking_seeds=S + 1))
    with pytest.raises(UsageError, match="masking_seeds"):
        StudyConfig(masking_seeds=0)
