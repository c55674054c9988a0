"""The static browser in a real browser (headless Chromium): the index and a latent page load without console
errors and show what the table holds; the data stays in small chunks at 2^16 latents; exports round-trip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae_fast.browse import LatentTable, export_neuronpedia, export_safetensors, write_site
from sae_fast.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                   reason="no headless Chromium here (.ci/run installs Debian's chromium)")


def planted_table(F: int, seeds: int = 4, bins: int = 5, seed: int = 0) -> LatentTable:
    rng = np.random.default_rng(seed)
    P = seeds - 1
    p_hat = (rng.integers(0, P + 1, F) / P).astype(np.float32)
    label = np.where(p_hat >= 0.95, 1, np.where(p_hat <= 0.05, -1, 0)).astype(np.int8)
    cos = -np.sort(-rng.uniform(0.2, 1.0, (F, P)), axis=1).astype(np.float32)
    cand = np.where(rng.random(F) < 0.1, rng.integers(0, 5, F), -1)
    edges = np.linspace(0, 1, bins + 1, dtype=np.float32)[None].repeat(F, 0)
    snippets = {3: ["the [[cat]] sat", "a <b>bold</b> [[cat]]"]}
    return LatentTable("seed1", ["seed0", "seed1", "seed2", "seed3"][:seeds], 0.7, 0.05, p_hat, label,
                       np.tile(np.array([0, 2, 3][:P], dtype=np.int32), (F, 1)),
                       rng.integers(0, F, (F, P)).astype(np.int32), cos,
                       frequency=rng.random(F).astype(np.float32), candidate=cand,
                       hist_counts=rng.integers(0, 50, (F, bins)), hist_edges=edges,
                       top_rows=np.tile(np.array([10, 20]), (F, 1)),
                       top_values=np.tile(np.array([2.5, 1.5], dtype=np.float32), (F, 1)), snippets=snippets)


def render(page: Path, fragment: str = "") -> tuple[str, str]:
    """(DOM after scripts ran, Chromium's log) of a file:// page."""
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom",
           page.resolve().as_uri() + fragment]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


@needs_browser
def test_index_and_latent_page_render_in_chromium(tmp_path):
    t = planted_table(250)
    index = write_site(t, tmp_path / "site", page_size=40, latent_chunk=64, index_chunk=100, progress=False)
    dom, log = render(index)
    assert console_errors(log) == [] and 'data-errors' not in dom
    assert 'data-ready="1"' in dom
    rows = re.findall(r'<a href="latent.html#(\d+)">', dom)
    assert len(rows) == 40 and rows[:3] == ["0", "1", "2"]  # sorted by latent, first page
    assert "250 latents match" in dom
    assert f"stable {int((t.label == 1).sum())}" in dom

    dom, _ = render(index, "?label=-1&sort=1&desc=1")  # a filtered, sorted view
    assert f"{int((t.label == -1).sum())} latents match" in dom
    shown = [int(i) for i in re.findall(r'<a href="latent.html#(\d+)">', dom)]
    assert shown and all(t.label[i] == -1 for i in shown)
    dom, _ = render(index, "?candidate=*&sort=4")
    assert f"{int((t.candidate >= 0).sum())} latents match" in dom

    dom, log = render(index.with_name("latent.html"), "#3")
    assert console_errors(log) == [] and 'data-errors' not in dom and 'data-ready="1"' in dom
    assert "seed seed1, latent 3" in dom
    assert f"p̂: {float(t.p_hat[3]):.3g}" in dom.replace("p̂: 1.00", "p̂: 1")
    partners = re.findall(r"<tr><td>(seed\d)</td><td>(\d+)</td>", dom)
    assert partners == [("seed0", str(t.partner_latent[3, 0])), ("seed2", str(t.partner_latent[3, 1])),
                        ("seed3", str(t.partner_latent[3, 2]))]
    assert dom.count('class="bar"') == 5  # the histogram's bins
    assert "<mark>cat</mark>" in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom  # snippet text is escaped, not HTML


@needs_browser
def test_latent_page_reports_a_missing_latent(tmp_path):
    index = write_site(planted_table(10), tmp_path / "site", progress=False)
    dom, _ = render(index.with_name("latent.html"), "#99")
    assert 'data-errors="1"' in dom and "no latent 99" in dom


@needs_browser
def test_browser_stays_chunked_at_2_to_16_latents(tmp_path):
    F = 2**16
    index = write_site(planted_table(F), tmp_path / "site", progress=False)
    sizes = [p.stat().st_size for p in (tmp_path / "site" / "data").iterdir()]
    assert max(sizes) < 2 * 2**20, max(sizes)  # no single huge page: every data file under 2 MiB
    assert sum(sizes) < 200 * 2**20
    dom, log = render(index)
    assert console_errors(log) == [] and f"{F} latents match" in dom
    dom, _ = render(index.with_name("latent.html"), f"#{F - 1}")
    assert f"latent {F - 1}" in dom and 'data-ready="1"' in dom


def test_exports_round_trip(tmp_path):
    t = planted_table(70)
    path = export_safetensors(t, tmp_path / "latents.safetensors")
    back = load_file(str(path))
    np.testing.assert_array_equal(back["p_hat"].numpy(), t.p_hat)
    np.testing.assert_array_equal(back["partner_latent"].numpy(), t.partner_latent)
    np.testing.assert_array_equal(back["candidate"].numpy(), t.candidate)
    files = export_neuronpedia(t, tmp_path / "np", batch_size=32)
    assert [f.name for f in files] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    feats = [f for p in files for f in json.loads(p.read_text())["features"]]
    assert [f["feature_index"] for f in feats] == list(range(70))
    f3 = feats[3]
    assert f3["sae_fast"]["p_hat"] == pytest.approx(float(t.p_hat[3]))
    assert [p["latent"] for p in f3["sae_fast"]["partners"]] == t.partner_latent[3].tolist()
    assert f3["activations"][0]["text"] == "the cat sat" and f3["frac_nonzero"] == pytest.approx(float(t.frequency[3]))


def _saved_run(root: Path) -> None:
    from sae_fast import TopKSAE, save_sae

    g = torch.Generator().manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
    for s in range(3):
        sae = TopKSAE(16, 32, 4, seed=s)
        with torch.no_grad():
            sae.W_dec[:12] = shared + 0.01 * torch.randn(12, 16, generator=g)
            sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=1))
        save_sae(sae, root / f"seed{s}")


def test_browse_and_export_commands_end_to_end(tmp_path, capsys, cli_fails):
    run = tmp_path / "run"
    _saved_run(run)
    assert main(["stability", str(run), "--no-progress"]) == 0
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32))
    assert main(["browse", str(run), "--out", str(tmp_path / "b"), "--activations", str(acts), "--seed", "1"]) == 0
    meta = (tmp_path / "b" / "data" / "meta.js").read_text()
    assert '"seed":"seed1"' in meta and '"num_latents":32' in meta
    cli_fails(["browse", str(run), "--out", str(tmp_path / "b")], "--overwrite")
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--activations", str(acts)]) == 0
    side = load_file(str(tmp_path / "e" / "latents.safetensors"))
    assert side["hist_counts"].shape == (32, 20)
    assert (side["p_hat"][:12] == 1).all()  # the planted shared latents
    assert np.isclose(side["hist_counts"].sum().item() / 500, side["frequency"].sum().item(), rtol=1e-5)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 7), dtype=np.float32))
    cli_fails(["export", str(run), "--out", str(tmp_path / "e2"), "--activations", str(bad)],
              r"shape \(5, 7\); expected \(N, 16\)")
    for option in ("--batch-size", "--max-rows"):  # checked when parsed, not a traceback of range() later
        cli_fails(["export", str(run), "--out", str(tmp_path / "e3"), "--activations", str(acts), option, "0"],
                  f"argument {option}: must be a positive integer, got 0", status=2)
    cli_fails(["browse", str(run), "--out", str(tmp_path / "b3"), "--page-size", "0"],
              "argument --page-size: must be a positive integer", status=2)
