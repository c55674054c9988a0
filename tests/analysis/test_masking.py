import numpy as np
import pytest
import torch

from sae_fast.analysis.frequency import compare_groups, firing_frequency, sample_latents, snippet, top_activations
from sae_fast.analysis.masking import delta_ev_sweep, masked_fvu, masking_study

from ._helpers import identity_sae


def _data(n: int = 400, d: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = torch.arange(1, d + 1, dtype=torch.float32)  # coordinate j has variance growing with j
    return torch.rand(n, d, generator=g) * scale


def test_masked_fvu_matches_hand_computation():
    sae, x = identity_sae(), _data()
    fvu = masked_fvu(sae, x, {"a": [0, 3], "all": np.ones(8, dtype=bool)})
    assert fvu["none"] == pytest.approx(0.0, abs=1e-10)
    total = ((x.double() - x.double().mean(0)) ** 2).sum()
    expected = (x.double()[:, [0, 3]] ** 2).sum() / total
    assert fvu["a"] == pytest.approx(float(expected), rel=1e-6)
    assert fvu["all"] == pytest.approx(float((x.double() ** 2).sum() / total), rel=1e-6)


def test_masking_study_shapes_and_ordering():
    sae, x = identity_sae(), _data()
    labels = np.array([-1, -1, -1, -1, 0, 0, 1, 1], dtype=np.int8)  # high-variance coords are "stable"
    res = masking_study(sae, x, labels, freq=firing_frequency(sae, x), ratio=2, n_random=3)
    assert res["n"] == 2 and res["sizes"] == {"stable": 2, "unstable": 4, "stable_n": 2, "unstable_2n": 4}
    assert res["delta_ev"]["stable"] > res["delta_ev"]["unstable"] > 0
    assert "random_like_stable" in res["random"] and "freqmatched_like_unstable" in res["random"]
    assert all(r["draws"] == 3 for r in res["random"].values())


def test_masking_study_evaluates_one_random_draw_per_set_and_kind(monkeypatch: pytest.MonkeyPatch):
    """4 sets x (1 + 3 draws x 2 kinds) masks: no random draws of random draws (they were made and wasted)."""
    import sae_fast.analysis.masking as module

    sae, x = identity_sae(), _data()
    labels = np.array([-1, -1, -1, -1, 0, 0, 1, 1], dtype=np.int8)
    seen: list[str] = []
    real = module.masked_fvu

    def spy(sae, x, masks, **kw):
        seen.extend(masks)
        return real(sae, x, masks, **kw)

    monkeypatch.setattr(module, "masked_fvu", spy)
    masking_study(sae, x, labels, freq=firing_frequency(sae, x), ratio=2, n_random=3)
    assert len(seen) == 4 * (1 + 3 * 2)
    assert not any(name.count("like_") > 1 for name in seen)
    sweep = delta_ev_sweep(sae, x, labels)
    assert set(sweep["curves"]) == {"stable", "unstable", "all"}
    with pytest.raises(ValueError, match="labels"):
        masking_study(sae, x, labels[:3])


def test_nan_activations_are_reported():
    x = _data()
    x[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        masked_fvu(identity_sae(), x, {})


def test_frequency_and_top_activations():
    sae, x = identity_sae(), _data()
    x[:, 7] = 0.0
    x[10, 7] = 5.0
    x[20, 7] = 3.0
    f = firing_frequency(sae, x)
    assert f[7] == pytest.approx(2 / len(x)) and f[0] == pytest.approx(1.0)
    rows, vals = top_activations(sae, x, [7, 0], n_top=3)
    assert rows[0].tolist() == [10, 20, -1] and vals[0, 0] == pytest.approx(5.0)
    assert rows[1, 0] == int(torch.argmax(x[:, 0]))
    groups = compare_groups(f, np.array([1, 1, 1, 1, -1, -1, -1, -1]))
    assert groups["stable"]["mean"] > groups["unstable"]["mean"]
    picks = sample_latents(np.array([1, 1, -1, -1, 0, 0, 0, -1]), f, per_group=1)
    assert len(picks["stable"]) == 1 and len(picks["unstable"]) == 1
    assert snippet(["a", "b", "##c", "d"], 1, width=1) == "a [[b]]c"
