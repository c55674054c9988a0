import numpy as np
import pytest
import torch

from sae_fast.analysis.candidates import candidate_subspaces, cluster_latents, coactivation_affinity
from sae_fast.analysis.pooling import pool_choice, pool_features, pooled_sae, pooling_study

from ._helpers import planted_decoders


def test_coactivation_affinity():
    fires = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
    aff = coactivation_affinity(fires)
    assert aff[0, 1] == 1.0 and aff[0, 2] == 0.0 and aff[1, 0] == 1.0


def _seeds(S=3, d=40, r=4, groups=2, noise_latents=6, seed=0):
    """Each seed: 2 groups of 2r latents in shared r-dim subspaces (fresh random directions inside), then noise."""
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.standard_normal((d, r)))[0] for _ in range(groups)]
    decs, fires = [], []
    N = 600
    for _ in range(S):
        rows = [rng.standard_normal((2 * r, r)) @ b.T for b in bases] + [rng.standard_normal((noise_latents, d))]
        decs.append(np.concatenate(rows))
        f = np.zeros((N, len(decs[-1])), dtype=bool)
        for g in range(groups):
            on = rng.random(N) < 0.2
            f[np.ix_(on, np.arange(g * 2 * r, (g + 1) * 2 * r))] = rng.random((on.sum(), 2 * r)) < 0.6
        f[:, groups * 2 * r:] = rng.random((N, noise_latents)) < 0.05
        fires.append(f)
    return decs, fires, groups * 2 * r


def test_candidates_recover_shared_subspaces_and_beat_null():
    decs, fires, n_group = _seeds()
    clusters = cluster_latents(decs[0], fires=fires[0], threshold=0.3)
    assert sorted(map(len, clusters))[-2:] == [8, 8]
    res = candidate_subspaces(decs, [np.arange(len(d)) for d in decs], fires=fires)
    grouped = [c for c in res["candidates"] if max(c["latents"]) < n_group]
    assert len(grouped) == 6 and all(c["score"] == 1.0 and c["rank"] == 4 for c in grouped)
    assert res["null_haar"]["score_mean"] == 0.0
    assert res["mean_best_similarity"] == pytest.approx(np.mean([c["mean_best_similarity"] for c in res["candidates"]]))
    assert res["mean_best_similarity"] > res["null_haar"]["mean_best_similarity_q99"]
    # random 8-latent subsets of a seed mostly contain a group's 4-dim span: a far higher null than Haar's,
    # yet the clusters beat it (enough draws for p <= 0.05 even with 6 candidates)
    assert res["null"]["draws"] >= 200 and res["null"]["score_mean"] > 0.3
    assert res["null"]["mean_best_similarity"] > 3 * res["null_haar"]["mean_best_similarity"]
    assert all(c["reproducible"] and c["p_value"] <= 0.05 < c["null_similarity"] for c in grouped)
    for p in res["per_seed"]:
        assert set(range(n_group)) <= set(p["reproducible_latents"])
    res_cos = candidate_subspaces(decs, [np.arange(len(d)) for d in decs], method="cosine", threshold=0.05)
    assert res_cos["params"]["method"] == "cosine"


def test_pool_features_and_pooled_sae(tmp_path):
    from sae_fast import TopKSAE

    decs, _ = planted_decoders(num_seeds=4, d=16, shared=6, private=6)
    pool = pool_features(decs[:3])
    assert sorted(pool.recurrence.tolist(), reverse=True)[:6] == [3] * 6
    assert (pool.recurrence[pool.order[:6]] == 3).all()
    saes = []
    for s, dec in enumerate(decs):
        sae = TopKSAE(16, 12, 3, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(dec, dtype=torch.float32))
            sae.b_dec.normal_()
        saes.append(sae.requires_grad_(False))
    pooled = pooled_sae(saes[:3], pool)
    assert pooled.num_latents == 12
    # the pre-activation of a pooled latent equals the one it had in its own SAE
    x = torch.randn(5, 16)
    c = pool.order[0]
    s, j = pool.representative[c]
    own = (x - saes[s].b_dec) @ saes[s].W_enc[j] + saes[s].b_enc[j]
    new = (x - pooled.b_dec) @ pooled.W_enc[0] + pooled.b_enc[0]
    torch.testing.assert_close(own, new, atol=1e-5, rtol=1e-5)
    before = [t.clone() for t in saes[0].parameters()]
    x_eval = torch.randn(200, 16)
    res = pooling_study(saes[:3], [decs[3]], x_eval, x_train=torch.randn(300, 16), refit_steps=3,
                        finetune_steps=3, refit_batch_size=64, save_dir=tmp_path / "pooled")
    assert res["pooled"]["p_hat_mean"] >= res["single_p_hat_mean_mean"]
    for key in ("pooled", "pooled_base", "single_refit"):
        assert "ev_refit" in res[key] and res[key]["finetune"]["steps"] == 3
        assert 0.5 < res[key]["finetune"]["decoder_cos_to_start_median"] < 1.0  # the decoder moved, a little
    assert res["single_refit"]["seed"] == 0
    # each pool is saved fine-tuned, and loads back as the SAE that was scored
    from sae_fast import load_sae
    from sae_fast.analysis.masking import masked_fvu

    for key, fill in (("pooled", "rank"), ("pooled_base", "base")):
        assert res[key]["saved"] == {"path": str(tmp_path / "pooled" / fill), "stage": "finetuned"}
        loaded = load_sae(tmp_path / "pooled" / fill)
        assert 1 - masked_fvu(loaded, x_eval, {})["none"] == pytest.approx(res[key]["finetune"]["ev"], abs=1e-6)
    # the caller's SAEs are untouched by the control's refit and fine-tuning
    assert not any(p.requires_grad for p in saes[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, saes[0].parameters()))
    # every base latent is in a recurring component or is the base's own: fill="base" rebuilds seed 0 exactly
    base_pooled = pooled_sae(saes[:3], pool, fill="base", base=0)
    choice = pool_choice(pool, 12, fill="base", decoders=decs[:3])
    given = pooled_sae(saes[:3], pool, fill="base", chosen=choice)  # the choice made once, not again
    assert all(torch.equal(a, b) for a, b in zip(given.parameters(), base_pooled.parameters()))
    with pytest.raises(ValueError, match="chosen holds 1 latents"):
        pooled_sae(saes[:3], pool, chosen=choice[:1])
    x = torch.randn(64, 16)
    torch.testing.assert_close(base_pooled(x).recon, saes[0](x).recon, atol=1e-5, rtol=1e-5)
    assert res["pooled_base"]["latents_from_other_seeds"] == 0
    hist = res["pooled_base"]["chosen_recurrence_hist"]
    assert hist[3] == 6 and sum(hist) == 12


def test_base_fill_takes_features_recurring_without_the_base_seed():
    """A feature shared by seeds 1 and 2 but absent from seed 0 replaces seed 0's latent nearest to it."""
    decs, _ = planted_decoders(num_seeds=3, d=16, shared=6, private=6)
    rng = np.random.default_rng(5)
    extra = rng.standard_normal(16)
    extra /= np.linalg.norm(extra)
    for s in (1, 2):
        decs[s][6] = extra
    other = rng.standard_normal(16)
    other -= (other @ extra) * extra
    decs[0][9] = 0.6 * extra + 0.8 * other / np.linalg.norm(other)  # cos 0.6 < theta: no link, but the nearest
    pool = pool_features(decs, freqs=[np.linspace(1.0, 0.1, 12) for _ in decs])
    choice = pool_choice(pool, 12, fill="base", base=0, decoders=decs)
    assert [c for c in choice if c[0] != 0] in ([(1, 6)], [(2, 6)])
    assert sorted(j for s, j in choice if s == 0) == [j for j in range(12) if j != 9]
    assert sorted(pool_choice(pool, 12, fill="base", min_recurrence=3, decoders=decs)) == [(0, j) for j in range(12)]
    with pytest.raises(ValueError, match="decoders"):
        pool_choice(pool, 12, fill="base")
    with pytest.raises(ValueError, match="fill"):
        pool_choice(pool, 12, fill="medoid")
    with pytest.raises(ValueError, match="min_recurrence"):
        pool_choice(pool, 12, fill="base", min_recurrence=1, decoders=decs)
    with pytest.raises(ValueError, match="fewer than target_size"):
        pool_choice(pool, 13, fill="base", decoders=decs)  # 7 recurring components + 5 private latents of seed 0


def test_base_fill_keeps_every_base_latent_of_a_chained_component():
    """a (seed 0) <-> x (seed 1) <-> y (seed 2) <-> b (seed 0) are mutual nearest neighbours along an arc: one
    component with two latents of the base seed; the base pool keeps both (the base's dictionary unchanged)."""
    rng = np.random.default_rng(0)
    plane = np.linalg.qr(rng.standard_normal((16, 2)))[0].T
    arc = {deg: np.cos(np.radians(deg)) * plane[0] + np.sin(np.radians(deg)) * plane[1] for deg in (0, 20, 40, 60)}
    decs = [rng.standard_normal((6, 16)) for _ in range(3)]
    decs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in decs]
    decs[0][0], decs[0][1], decs[1][0], decs[2][0] = arc[0], arc[60], arc[20], arc[40]
    pool = pool_features(decs)
    assert pool.component_of[0][0] == pool.component_of[0][1] == pool.component_of[1][0] == pool.component_of[2][0]
    choice = pool_choice(pool, 6, fill="base", base=0, decoders=decs)
    assert sorted(choice) == [(0, j) for j in range(6)]


def test_best_similarity_equals_principal_angles_over_every_pair():
    """The GEMM shortcut (sum cos² = ||Uqᵀ Ub||_F²) picks the same best candidate per seed, with the same value,
    as scoring every pair by its principal angles."""
    from sae_fast import principal_angles_pairs
    from sae_fast.analysis.candidates import _best_similarity, _cos2_chunks

    rng = np.random.default_rng(3)
    d, S = 30, 3
    shared = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    bases, owner = [], []
    for s in range(S):
        for r in (1, 2, 3, 5, 4):
            bases.append(np.linalg.qr(rng.standard_normal((d, r)))[0])
            owner.append(s)
        bases.append(np.linalg.qr(shared + 0.05 * rng.standard_normal((d, 4)))[0])  # found in every seed
        owner.append(s)
    owner = np.array(owner)
    pairs = np.array([(i, j) for i in range(len(bases)) for j in range(len(bases))])
    theta = principal_angles_pairs(bases, pairs)
    cos2 = np.where(np.isfinite(theta), np.cos(theta) ** 2, 0.0).sum(axis=1).reshape(len(bases), len(bases))
    chunks = np.concatenate([c for _, _, c in _cos2_chunks(bases, bases, max_entries=50)])
    np.testing.assert_allclose(chunks, cos2, atol=1e-12)
    ranks = np.array([b.shape[1] for b in bases])
    for normalize, pick in (("min", np.minimum), ("max", np.maximum)):
        sim = cos2 / pick(ranks[:, None], ranks[None, :])
        got = _best_similarity(bases, owner, bases, owner, S, normalize)
        # scoring each query against an explicit partner list of every candidate picks the same winners
        every = [np.arange(len(bases))] * len(bases)
        np.testing.assert_array_equal(_best_similarity(bases, owner, bases, owner, S, normalize, every), got)
        for q in range(len(bases)):
            for s in range(S):
                if s == owner[q]:
                    assert np.isnan(got[q, s])
                else:
                    assert got[q, s] == pytest.approx(sim[q, owner == s].max(), abs=1e-12)
        assert (got[owner == 0][-1, 1:] > 0.8).all()  # the shared subspace is found in the other seeds


def test_subset_null_flags_a_cluster_no_better_than_random_latents():
    """Isotropic latents, clustered by cosine: candidates may 'reproduce' against big random subspaces under the
    min-normalised similarity, but no better than random latent subsets of the same seed, so none is flagged."""
    rng = np.random.default_rng(4)
    d, S = 6, 3
    decs = [rng.standard_normal((30, d)) for _ in range(S)]
    res = candidate_subspaces(decs, [np.arange(30)] * S, method="cosine", threshold=0.3, tau=0.5,
                              freqs=[rng.random(30) for _ in range(S)])
    assert res["candidates"] and "frequency-matched" in res["params"]["null"]
    assert res["null"]["mean_best_similarity"] > 0.5  # random latents of a 6-dim space look "reproducible" too
    assert np.mean([c["p_value"] for c in res["candidates"]]) > 0.2
    assert res["reproducible_share"] <= 0.1


def test_pooling_honours_absolute():
    """Seed 1 holds the negated decoders of seed 0: one feature each under |cos|, none under the signed cosine."""
    decs, _ = planted_decoders(num_seeds=2, d=16, shared=6, private=6)
    decs[1] = -decs[0]
    assert (pool_features(decs).recurrence == 1).all()
    assert (pool_features(decs, absolute=True).recurrence == 2).all()
    from sae_fast import TopKSAE

    saes = []
    for dec in (decs[0], decs[0] + 0.01):
        sae = TopKSAE(16, 12, 3, seed=0)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(dec, dtype=torch.float32))
        saes.append(sae.requires_grad_(False))
    x = torch.randn(64, 16)
    signed = pooling_study(saes, [-decs[0]], x)
    absolute = pooling_study(saes, [-decs[0]], x, absolute=True)
    assert signed["pooled"]["p_hat_mean"] == 0.0 and absolute["pooled"]["p_hat_mean"] == 1.0
    assert absolute["absolute"] is True


def test_refit_shows_progress(capsys):
    from sae_fast import TopKSAE
    from sae_fast.analysis.pooling import refit

    sae = TopKSAE(8, 16, 2, seed=0)
    losses = refit(sae, torch.randn(64, 8), steps=3, batch_size=16, progress=True, desc="refit ranked pool")
    assert len(losses) == 3 and "refit ranked pool" in capsys.readouterr().err


def test_clusters_found_before_give_the_same_result_without_clustering(monkeypatch):
    """What the FDR step does with the candidates step's clusters: the same candidates, scores and p-values."""
    from sae_fast.analysis import candidates as cand_mod

    decs, fires, _ = _seeds(seed=4)
    sets = [np.arange(len(d)) for d in decs]
    first = candidate_subspaces(decs, sets, fires=fires, min_null_draws=300, seed=2)
    given = [(c["seed"], c["latents"]) for c in first["candidates"]]
    monkeypatch.setattr(cand_mod, "cluster_latents", lambda *a, **k: pytest.fail("clustered again"))
    again = candidate_subspaces(decs, sets, fires=fires, min_null_draws=300, seed=2, clusters=given)
    for a, b in zip(first["candidates"], again["candidates"], strict=True):
        for key in ("seed", "latents", "rank", "score", "mean_best_similarity", "p_value"):
            assert a[key] == b[key]
    with pytest.raises(ValueError, match=r"clusters\[0\] names seed 9"):
        candidate_subspaces(decs, sets, fires=fires, clusters=[(9, [0, 1])])
