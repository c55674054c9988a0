import numpy as np
import pytest

from sae_fast.analysis.over_training import find_history, load_history, over_training
from sae_fast.errors import DataError


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _run(S=4, d=32, shared=20, frozen=10, moved=10, seed=0):
    """Checkpoints 0 (random init per seed), 1 (half way), 2 (final): ``shared`` latents converge to common
    directions, ``frozen`` stay at their initialisation, ``moved`` go to new random directions per seed."""
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal((shared, d)))
    F = shared + frozen + moved
    init = [_unit(rng.standard_normal((F, d))) for _ in range(S)]
    final = []
    for s in range(S):
        f = init[s].copy()
        f[:shared] = common
        f[shared + frozen:] = _unit(rng.standard_normal((moved, d)))
        final.append(f)
    half = [_unit(a + b) for a, b in zip(init, final)]
    return [(0, init), (5, half), (10, final)], shared, frozen


def test_over_training_labels_transitions_and_init_cosines():
    ckpts, shared, frozen = _run()
    res = over_training(iter(ckpts))
    assert res["steps"] == [0, 5, 10]
    assert res["per_step"][0]["share_unstable"] > 0.9 and res["per_step"][-1]["share_stable"] == pytest.approx(0.5)
    last = np.array(res["transitions"][-1]["counts"])
    assert last.sum() == 4 * 40
    # unstable at step 0 and stable at the end: the shared latents of every seed
    first_to_last = sum(np.array(t["counts"]) for t in res["transitions"])
    assert first_to_last.sum() == 2 * 4 * 40
    cos = res["cos_to_init"]
    assert np.allclose(cos[:, shared:shared + frozen], 1.0)
    q = res["final"]["quadrants"]
    assert q["unmoved_unstable"] == pytest.approx(0.25) and q["moved_unstable"] == pytest.approx(0.25)
    assert q["moved_stable"] == pytest.approx(0.5)
    assert res["final"]["spearman_cos_init_vs_p_hat"] < 0


def test_find_and_load_history(tmp_path):
    from sae_fast import TopKSAE
    from sae_fast.checkpoint import save_sae

    for s in range(2):
        for step in (0, 1, 2):
            save_sae(TopKSAE(8, 16, 2, seed=s * 10 + step), tmp_path / f"seed{s}" / "history" / f"step{step}")
    (tmp_path / "seed1" / "history" / "step4").mkdir()  # kept by one seed only: not common
    hist = find_history(tmp_path)
    assert sorted(hist) == [0, 1, 2]
    res = over_training(load_history(hist))
    assert res["steps"] == [0, 1, 2] and res["cos_to_init"].shape == (2, 16)
    with pytest.raises(DataError, match="at least 2 seed folders"):
        find_history(tmp_path / "seed0")
