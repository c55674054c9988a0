"""The study on a folder of small saved seeds (no training), through Python and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.sae import TopKSAE

D, F, K, SHARED = 16, 24, 4, 12


def _run_dir(tmp_path, num_seeds: int = 4, d: int = D):
    """Seeds sharing 12 decoder (and encoder) directions, the rest random; sparsify and SAELens layouts mixed."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal((SHARED, d))
    for s in range(num_seeds):
        rows = np.concatenate([common + 0.02 * rng.standard_normal((SHARED, d)), rng.standard_normal((F - SHARED, d))])
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        sae = TopKSAE(d, F, K, seed=s)
        with torch.no_grad():
            sae.W_dec.copy_(torch.as_tensor(rows, dtype=torch.float32))
            sae.W_enc.copy_(torch.as_tensor(rows, dtype=torch.float32))
        save_sae(sae, tmp_path / "run" / f"seed{s}", format="saelens" if s == 1 else "sparsify")
    (tmp_path / "run" / "checkpoints" / "step_1" / "seed0").mkdir(parents=True)  # trainer leftovers are ignored
    x = torch.as_tensor(rng.standard_normal((3000, d)), dtype=torch.float32)
    return tmp_path / "run", x


def test_study_on_saved_seeds_writes_traceable_report(tmp_path, monkeypatch):
    from sae_fast import study
    from sae_fast.activations import save_tensor_cache
    from sae_fast.analysis import pooling as pool_mod
    from sae_fast.analysis.frequency import firing_frequency
    from sae_fast.checkpoint import load_sae
    from sae_fast.seed_study import StudyConfig

    run, x = _run_dir(tmp_path)
    out = tmp_path / "study"
    x_train = torch.as_tensor(np.random.default_rng(9).standard_normal((700, D)), dtype=torch.float32)
    train_cache = save_tensor_cache(x_train, tmp_path / "train_cache").path  # fewer rows than max_refit_tokens
    seen = {}
    original = pool_mod.pooling_study

    def spy(*args, **kwargs):
        seen.update(x_eval=args[2], freqs=kwargs["freqs"])
        return original(*args, **kwargs)

    monkeypatch.setattr(pool_mod, "pooling_study", spy)
    res = study(run, activations=x, refit_activations=train_cache, out_dir=out, synthetic=False, progress=False,
                config=StudyConfig(ranks=(2, 4), n_random=1, refit_steps=2, finetune_steps=2))
    # the pool's frequency ranking comes from the training rows, not from the rows its EV is measured on
    assert torch.equal(seen["x_eval"], x)
    np.testing.assert_allclose(seen["freqs"][0], firing_frequency(load_sae(run / "seed0"), x_train), atol=1e-12)
    assert res["pooling"]["note"].startswith("refit on 700 training activations")
    assert res["source"]["seeds"] == ["seed0", "seed1", "seed2", "seed3"]
    st = res["stability"]["anchor"]
    assert st["num_stable"] == SHARED and st["num_unstable"] + st["num_neither"] == F - SHARED
    assert res["masking"]["delta_ev"]["stable"] > 0
    assert res["pooling"]["num_pool_seeds"] == 2 and res["pooling"]["pooled"]["share_stable"] >= 0.4
    for name in ("results.json", "arrays.npz", "report.html", "report.md", "snippets.json",
                 "pooling/pooled/base/cfg.json", "pooling/pooled/rank/sae.safetensors",
                 "stability/stability.json", "figures/stability.png", "figures/masking.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html
    assert json.loads((out / "results.json").read_text()) == res
    _check_traceable(out, res)
    md = (out / "report.md").read_text()
    # no tokens, no model: both absences are stated, not left silent
    assert "Top-activating snippets: not computed" in md and res["snippets_file"] is None
    assert res["lm_loss"]["skipped"].startswith("no model given") and "not computed — no model given" in md
    with np.load(out / "arrays.npz") as z:
        np.testing.assert_array_equal(z["p_hat"].shape, (4, F))
        cid, cscore = z["candidate_id"], z["candidate_score"]
    # which latents belong to which candidate subspace, per (seed, latent)
    cands = res["candidates"]["candidates"]
    assert cands and cid.shape == (4, F) and (cid >= 0).sum() == sum(c["size"] for c in cands)
    for c, cand in enumerate(cands):
        assert (cid[cand["seed"], cand["latents"]] == c).all()
        np.testing.assert_allclose(cscore[cand["seed"], cand["latents"]], cand["score"])
    assert "p [p_value]" in md and "candidates.candidates." in md  # the top-candidates table
    sub = res["subspaces"]
    assert set(sub["matched"]) >= {"unstable", "nonstable"} and "random_subset" not in sub["ranks"]["2"]


def _check_traceable(out, res: dict) -> None:
    """Every table row of the markdown report names a results.json path whose value it shows (3-column tables:
    the value; wider ones: one JSON key per column, named in brackets in the header)."""
    import re

    from sae_fast.study.lookup import has_path as _has
    from sae_fast.study.report import _fmt, _get

    md = (out / "report.md").read_text().splitlines()
    checked = 0
    header: list[str] = []
    for i, line in enumerate(md):
        if i + 1 < len(md) and md[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
        if not (line.startswith("| ") and line.endswith("` |")):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        path = cells[-1].strip("`")
        if len(cells) == 3:
            pairs = [(path, cells[1])]
        else:
            keys = [re.search(r"\[(\w+)\]$", h).group(1) for h in header[:-1]]
            pairs = [(f"{path}.{k}", c) for k, c in zip(keys, cells[:-1])]
        for full, cell in pairs:
            value = _get(res, full)
            assert _has(res, full), (line, full)  # a path that resolves to nothing fails
            assert value is not None or cell == "–", (line, full)  # only a stored null (NaN) shows as "–"
            if isinstance(value, (bool, str)):
                assert cell == _fmt(value), (line, full)
            elif isinstance(value, int):
                assert int(cell) == value, (line, full)
            elif isinstance(value, float):
                assert float(cell) == pytest.approx(value, rel=1e-3, abs=1e-6), (line, full)
            elif isinstance(value, list):
                assert cell.split(", ")[0] == str(value[0]), (line, full)
            checked += 1
    assert checked > 60


def test_study_rejects_bad_input(tmp_path):
    from sae_fast import study

    run, x = _run_dir(tmp_path, num_seeds=2)
    with pytest.raises(ValueError, match="activations"):
        study(run, out_dir=tmp_path / "o", synthetic=False, progress=False)
    with pytest.raises(ValueError, match="d=8"):
        study(run, activations=torch.zeros(100, 8), out_dir=tmp_path / "o", synthetic=False, progress=False)
    bad = x.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        study(run, activations=bad, out_dir=tmp_path / "o", synthetic=False, progress=False)
    with pytest.raises(ValueError, match="refit_activations have d=8"):
        study(run, activations=x, refit_activations=torch.zeros(100, 8), out_dir=tmp_path / "o", synthetic=False,
              progress=False)
    with pytest.raises(ValueError, match=r">= 2 seeds"):
        study(tmp_path / "run" / "seed0", activations=x, out_dir=tmp_path / "o", synthetic=False, progress=False)


def test_cli_study(tmp_path, capsys):
    from sae_fast.cli import main

    run, x = _run_dir(tmp_path, num_seeds=3)
    np.save(tmp_path / "acts.npy", x.numpy())
    np.save(tmp_path / "train.npy", x.numpy()[::-1].copy())
    rc = main(["study", str(run), "--activations", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "s"),
               "--no-synthetic", "--no-progress", "--ranks", "2", "--refit-steps", "2", "--finetune-steps", "2",
               "--refit-batch-size", "64",
               "--pool-seeds", "2", "--refit-activations", str(tmp_path / "train.npy"), "--max-refit-tokens", "500"])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "s" / "report.html").is_file()
    pooling = json.loads((tmp_path / "s" / "results.json").read_text())["pooling"]
    assert pooling["note"].startswith("refit on 500 training activations; EV on all 3000 held-out rows")
    assert pooling["pooled_base"]["refit_steps"] == 2 and "ev_refit" in pooling["single_refit"]


def test_embedded_default_reuses_only_matching_outputs(tmp_path):
    """A folder made with other settings (layer 3, 3 seeds) is refused for layer 5, 2 seeds, naming the fields."""
    from sae_fast import study
    from sae_fast.seed_study import EmbeddedDefault, check_embedded_reuse, load_seeds, train_embedded_default

    out = tmp_path / "study"
    assert check_embedded_reuse(out, EmbeddedDefault(layer=3, num_seeds=3)) is False
    (out / "seeds").mkdir()
    assert check_embedded_reuse(out, EmbeddedDefault(layer=3, num_seeds=3)) is True
    with pytest.raises(ValueError, match=r"layer: saved 3, now 5; seeds: saved \[0, 1, 2\], now \[0, 1\].*--out"):
        train_embedded_default(out, EmbeddedDefault(layer=5, num_seeds=2), progress=False)  # before any work
    legacy = tmp_path / "legacy"
    (legacy / "activations").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"embedded_default\.json"):
        check_embedded_reuse(legacy, EmbeddedDefault())
    # only the seeds asked for are loaded, not every seed* folder
    run, x = _run_dir(tmp_path, num_seeds=4)
    seeds = load_seeds(run, names=["seed0", "seed1"])
    assert seeds.names == ["seed0", "seed1"] and len(seeds.saes) == 2
    with pytest.raises(ValueError, match="seed7"):
        load_seeds(run, names=["seed0", "seed7"])
    with pytest.raises(ValueError, match="activations are for a given run_dir"):
        study(None, activations=x, out_dir=tmp_path / "o", synthetic=False, progress=False)


def test_study_on_sparsify_hookpoint_layout_without_refit(tmp_path):
    """Seeds written by the real sparsify (tests/data fixture, perturbed per seed) in its <seed>/<hookpoint>/
    layout; no refit: EV on every held-out row, no refit claimed; --absolute reaches the pooling."""
    from pathlib import Path

    from sae_fast import study
    from sae_fast.checkpoint import load_sae
    from sae_fast.seed_study import StudyConfig

    fixture = Path(__file__).parent / "data" / "sparsify_1.3.3_topk_d8_f24"
    gen = torch.Generator().manual_seed(0)
    for s in range(4):
        sae = load_sae(fixture, dtype=torch.float32)
        with torch.no_grad():
            noise = torch.randn(sae.W_dec.shape, generator=gen)
            noise[:12] *= 0.02  # the first half recurs across seeds, the rest is fresh
            sae.W_dec.copy_(torch.cat([sae.W_dec[:12], torch.zeros_like(sae.W_dec[12:])]) + noise)
        save_sae(sae, tmp_path / "run" / f"seed{s}" / "layers.3", format="sparsify")
    x = torch.randn(2000, 8, generator=gen)
    out = tmp_path / "study"
    res = study(tmp_path / "run", activations=x, out_dir=out, synthetic=False, progress=False,
                config=StudyConfig(ranks=(2,), n_random=1, refit_steps=0, finetune_steps=0, absolute=True))
    assert res["source"]["seeds"] == [f"seed{s}/layers.3" for s in range(4)]
    assert res["stability"]["anchor"]["num_stable"] >= 10
    pool = res["pooling"]
    assert "refit on" not in pool["note"] and "ev_refit" not in pool["pooled"] and "single_refit" not in pool
    assert pool["absolute"] is True and pool["ranked_by"] == "recurrence, then size"
    assert pool["single"][0]["ev"] == pytest.approx(res["masking"]["ev_full"], abs=1e-6)  # all rows, not half
    assert "encoder refit" not in (out / "report.md").read_text()
    _check_traceable(out, res)


# --- a given run with its language model (--model) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory):
    """A tiny GPT-2 (d = 32) saved twice, with and without its LM head, and a file of 60 held-out texts."""
    pytest.importorskip("transformers")
    from .analysis._tiny_lm import WORDS, save_tiny_gpt2

    base = tmp_path_factory.mktemp("lms")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS[2:], rng.integers(6, 12))) for _ in range(60)]
    (base / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return save_tiny_gpt2(base / "causal", train_steps=20), save_tiny_gpt2(base / "base", lm_head=False), texts


def test_cli_study_with_a_causal_lm_reports_the_spliced_next_token_loss(tmp_path, tiny_lms, capsys, one_torch_thread):
    from sae_fast.cli import main

    causal, _, _ = tiny_lms
    run, _ = _run_dir(tmp_path, num_seeds=3, d=32)
    out = tmp_path / "s"
    rc = main(["study", str(run), "--model", str(causal), "--layer", "1", "--texts", str(causal.parent / "texts.txt"),
               "--out", str(out), "--no-synthetic", "--no-progress", "--ranks", "2", "--refit-steps", "0",
               "--finetune-steps", "0", "--splice-texts", "16"])
    assert rc == 0 and "next-token loss: clean" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    lm = res["lm_loss"]
    assert lm["hook"] == "layers.1" and lm["num_texts"] == 16 and lm["model"] == str(causal)
    assert {"none", "stable", "unstable", "random_like_stable", "random_like_unstable"} <= set(lm["masks"])
    none = lm["masks"]["none"]
    assert none["delta_vs_clean"] == pytest.approx(none["loss"] - lm["clean"]) and none["delta_vs_recon"] == 0
    assert res["source"]["hook"] == "layers.1" and res["source"]["eval_tokens"] > 400  # computed from the model
    assert res["snippets_file"] == "snippets.json" and json.loads((out / "snippets.json").read_text())
    md = (out / "report.md").read_text()
    assert "`lm_loss.clean`" in md and "`lm_loss.masks.stable`" in md and "Δ vs clean [delta_vs_clean]" in md
    assert "Top-activating snippets (snippets.json)" in md
    _check_traceable(out, res)
    with pytest.raises(SystemExit, match="--layer L or --module"):
        main(["study", str(run), "--model", str(causal), "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="need RUN_DIR"):
        main(["study", "--model", str(causal), "--out", str(tmp_path / "t")])


def test_study_with_a_model_without_lm_head_says_why_and_still_shows_snippets(tmp_path, tiny_lms, one_torch_thread):
    from sae_fast import study
    from sae_fast.seed_study import StudyConfig, StudyModel

    causal, base, texts = tiny_lms
    run, x = _run_dir(tmp_path, num_seeds=3, d=32)
    out = tmp_path / "s"
    cfg = StudyConfig(ranks=(2,), n_random=1, refit_steps=0, finetune_steps=0)
    res = study(run, activations=x[:500], model=StudyModel(str(base), module="h.0", texts=texts), out_dir=out,
                synthetic=False, progress=False, config=cfg)
    assert "not a causal LM" in res["lm_loss"]["skipped"] and "GPT2Model" in res["lm_loss"]["skipped"]
    assert res["source"]["eval_tokens"] == 500 and res["source"]["snippet_tokens"] > 400  # rows from --activations
    assert res["snippets_file"] == "snippets.json" and "snippets_skipped" not in res
    md = (out / "report.md").read_text()
    assert "not computed — the model is not a causal LM" in md and "Top-activating snippets (snippets.json)" in md
    # a causal LM hooked at the embeddings (layer 0) cannot be spliced: the reason, not a crash after the analyses
    res = study(run, activations=x[:500], model=StudyModel(str(causal), layer=0, texts=texts), out_dir=tmp_path / "e",
                synthetic=False, progress=False, config=cfg)
    assert "embeddings (layer 0)" in res["lm_loss"]["skipped"] and (tmp_path / "e" / "results.json").is_file()
    run16, _ = _run_dir(tmp_path / "narrow", num_seeds=2)
    with pytest.raises(ValueError, match=r"gives d=32 at hook point layers\.1 but the SAEs have d_in=16"):
        study(run16, model=StudyModel(str(causal), layer=1, texts=texts), out_dir=out, synthetic=False, progress=False)
