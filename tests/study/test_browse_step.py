"""The study step ``browse``: the feature browser and exports built from the study's own artifacts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file

from sae_fast.browse.study import study_table
from sae_fast.browse.table import activation_stats, code_stats
from sae_fast.checkpoint import load_sae
from sae_fast.cli import main
from sae_fast.errors import DataError, UsageError
from sae_fast.sae import TopKSAE
from sae_fast.study import StudyConfig, study
from sae_fast.study.inputs import HeldOut
from tests.browse.test_site import console_errors, needs_browser, render

from ._planted import FAST, planted_run

ONLY = ["browse"]


def _with_tokens(x: torch.Tensor, per_text: int = 10) -> HeldOut:
    """The rows as texts of ``per_text`` tokens: token ``w<row>`` at position row % per_text of text row // per_text."""
    n = x.shape[0]
    tokens = [[f"w{t * per_text + p}" for p in range(per_text)] for t in range((n + per_text - 1) // per_text)]
    where = np.stack([np.arange(n) // per_text, np.arange(n) % per_text], 1).astype(np.int64)
    return HeldOut(lambda a, b: x[a:b], n, x.shape[1], "planted", tokens, where)


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse_study")
    run, x = planted_run(root, F=40, shared=16, rows=1200)
    out = root / "out"
    res = study(run, activations=_with_tokens(x), out_dir=out, synthetic=False, progress=False,
                config=StudyConfig(**{**FAST, "anchor": 1, "snippet_top": 3, "browse_bins": 6,
                                      "candidate_threshold": 0.01}), only=ONLY)
    return run, x, out, res


def test_code_stats_equal_the_encoder_pass():
    rng = np.random.default_rng(0)
    sae = TopKSAE(8, 30, 3, seed=0)
    x = torch.as_tensor(rng.standard_normal((400, 8)), dtype=torch.float32)
    batches = [x[i:i + 64] for i in range(0, 400, 64)]
    want = activation_stats(sae, batches, 30, bins=7, top=4)
    with torch.no_grad():
        v, i = sae.encode(x)
    keep = v > 0
    rows = torch.arange(400).unsqueeze(1).expand_as(v)[keep].numpy()
    codes = sp.csr_matrix((v[keep].numpy(), (rows, i[keep].numpy())), shape=(400, 30))
    got = code_stats(codes, bins=7, top=4)
    for name in ("frequency", "hist_counts", "top_rows"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_allclose(got["top_values"], want["top_values"], rtol=1e-6)
    np.testing.assert_allclose(got["hist_edges"], want["hist_edges"], rtol=1e-6)


def test_export_equals_the_study_arrays(planted_study):
    _, x, out, res = planted_study
    side = load_file(str(out / "export" / "latents.safetensors"))
    with np.load(out / "candidates" / "arrays.npz") as z:
        cand = z["candidate_id"][1]
    with np.load(out / "firing" / "arrays.npz") as z:
        freq = z["freq"][1]
    with np.load(out / "stability" / "arrays.npz") as z:
        p_hat, labels = z["p_hat"][1], z["labels"][1]
    np.testing.assert_array_equal(side["candidate"].numpy(), cand)
    np.testing.assert_allclose(side["frequency"].numpy(), freq, rtol=1e-6)
    np.testing.assert_allclose(side["p_hat"].numpy(), p_hat, rtol=1e-6)
    np.testing.assert_array_equal(side["label"].numpy(), labels)
    assert (cand >= 0).sum() >= 2, "the planted study should have a candidate subspace to show"
    assert res["browse"]["seed"] == "seed1"
    # the top activations are the anchor SAE's own: row r's value is its encoded activation
    sae = load_sae(out.parent / "run" / "seed1")
    lat = int(np.nanargmax(side["top_values"].numpy()[:, 0]))
    r = int(side["top_rows"][lat, 0])
    with torch.no_grad():
        v, i = sae.encode(x[r:r + 1])
    assert float(v[0][i[0] == lat][0]) == pytest.approx(float(side["top_values"][lat, 0]), rel=1e-5)
    batch = json.loads((out / "export" / "neuronpedia" / "batch-0.json").read_text())
    feat = batch["features"][lat]
    assert feat["activations"][0]["snippet"].count(f"[[w{r}]]") == 1


@needs_browser
def test_site_shows_candidate_members_and_snippets(planted_study):
    _, _, out, _ = planted_study
    report = (out / "report.html").read_text()
    assert 'href="browse/index.html"' in report and "export/latents.safetensors" in report
    side = load_file(str(out / "export" / "latents.safetensors"))
    cand, rows = side["candidate"].numpy(), side["top_rows"].numpy()
    lat = int(np.flatnonzero((cand >= 0) & (rows[:, 0] >= 0))[0])
    members = sorted(int(j) for j in np.flatnonzero(cand == cand[lat]) if j != lat)
    dom, log = render(out / "browse" / "index.html")
    assert console_errors(log) == [] and 'data-ready="1"' in dom and "40 latents match" in dom
    dom, log = render(out / "browse" / "latent.html", f"#{lat}")
    assert console_errors(log) == [] and 'data-ready="1"' in dom and f"latent {lat}" in dom
    shown = {int(m) for m in re.findall(r'href="latent.html#(\d+)"', dom)}
    assert set(members) <= shown
    assert f"<mark>w{int(rows[lat, 0])}</mark>" in dom


def test_cli_browse_and_export_read_a_study_folder(planted_study, tmp_path, capsys):
    _, _, out, _ = planted_study
    assert main(["browse", str(out), "--out", str(tmp_path / "site")]) == 0
    assert "browser of seed seed1 (40 latents)" in capsys.readouterr().out
    data = (tmp_path / "site" / "data" / "latents_0.js").read_text()
    assert "[[w" in data  # the study's snippets reach the browser
    assert main(["export", str(out), "--out", str(tmp_path / "exp"), "--format", "safetensors"]) == 0
    a = load_file(str(tmp_path / "exp" / "latents.safetensors"))
    b = load_file(str(out / "export" / "latents.safetensors"))
    for name in ("candidate", "frequency", "top_rows", "hist_counts", "p_hat", "partner_latent"):
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


def test_code_stats_memory_is_codes_plus_table_not_rows_by_latents():
    import tracemalloc

    N, F, k, bins, top = 40_000, 2**15, 4, 10, 5
    rng = np.random.default_rng(1)
    cols = rng.integers(0, F, (N, k))
    codes = sp.csr_matrix((rng.random(N * k).astype(np.float32) + 0.1,
                           (np.repeat(np.arange(N), k), cols.reshape(-1))), shape=(N, F))
    codes.sum_duplicates()
    tracemalloc.start()
    try:
        code_stats(codes, bins=bins, top=top)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    stated = 8 * (codes.nnz + F * (bins + top + 2))  # O(nnz + F·(bins + top)) in 8-byte words
    assert peak < 6 * stated, f"peak {peak / 2**20:.1f} MiB, stated scale {stated / 2**20:.1f} MiB"
    assert peak < N * F * 4 / 100  # nowhere near a dense (N, F) float32 (4.9 GiB here)


def test_bad_browse_seed_is_refused_before_any_step(tmp_path):
    run, x = planted_run(tmp_path, F=16, shared=8, rows=300)
    with pytest.raises(UsageError, match="browse_seed 7 outside the 3 seeds"):
        study(run, activations=x, out_dir=tmp_path / "out", synthetic=False, progress=False,
              config=StudyConfig(**{**FAST, "browse_seed": 7}), only=ONLY)
    assert not (tmp_path / "out" / "stability").exists()


def test_cli_names_a_seed_the_study_lacks(planted_study, tmp_path):
    _, _, out, _ = planted_study
    with pytest.raises(DataError, match="--seed 'seed9' is neither a seed name"):
        study_table(out, "seed9")
    with pytest.raises(SystemExit) as exit_:
        main(["browse", str(out), "--seed", "seed9", "--out", str(tmp_path / "site")])
    assert exit_.value.code == 1
