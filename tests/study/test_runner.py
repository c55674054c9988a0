"""The pipeline: reuse by fingerprint, --only / --redo, θ invalidating downstream only, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sae_fast.errors import OutputDirError, UsageError
from sae_fast.study import StudyConfig, study
from sae_fast.study.step import MARKER
from sae_fast.study.steps import default_steps

from ._planted import FAST, planted_run

NAMES = [s.name for s in default_steps(synthetic=False)]


@pytest.fixture
def computed(monkeypatch):
    """Names of the steps whose ``run`` was called (not loaded), in order."""
    from sae_fast.study.steps.section import SectionStep

    calls: list[str] = []
    original = SectionStep.run

    def spy(self, ctx):
        calls.append(self.name)
        return original(self, ctx)

    monkeypatch.setattr(SectionStep, "run", spy)
    return calls


def _study(run, x, out, **kw):
    cfg = StudyConfig(**{**FAST, **kw.pop("cfg", {})})
    return study(run, activations=x, out_dir=out, synthetic=False, progress=False, config=cfg, **kw)


def test_rerun_reuses_every_step_and_theta_recomputes_downstream_only(tmp_path, computed):
    run, x = planted_run(tmp_path)
    out = tmp_path / "out"
    first = _study(run, x, out)
    assert computed == NAMES
    computed.clear()
    again = _study(run, x, out)
    assert computed == [] and again["stability"] == first["stability"] and again["masking"] == first["masking"]
    changed = _study(run, x, out, cfg={"theta": 0.95})
    # matching (no θ in its settings) and firing are reused; stability and everything reading it are recomputed
    assert computed == [n for n in NAMES if n not in ("matching", "firing")]
    assert changed["config"]["theta"] == 0.95
    assert json.loads((out / "stability" / "stability.json").read_text())["theta"] == 0.95


def test_only_and_redo(tmp_path, computed):
    run, x = planted_run(tmp_path)
    out = tmp_path / "out"
    res = _study(run, x, out, only=["stability"])
    assert computed == ["stability"]  # p̂ comes from stability_scores, not from the matching step's graph
    assert res["missing_steps"] == [n for n in NAMES if n != "stability"]
    assert "Step masking: not computed in this folder" in (out / "report.md").read_text()
    assert not (out / "masking" / MARKER).exists()
    computed.clear()
    res = _study(run, x, out, only=["masking"])  # stability reused, firing computed, nothing else
    assert computed == ["firing", "masking"] and "masking" in res
    computed.clear()
    _study(run, x, out, redo=["stability"])
    # matching runs for the first time here (stability does not read it); masking is reused
    assert computed[:2] == ["matching", "stability"] and "masking" not in computed and "firing" not in computed
    with pytest.raises(UsageError, match=r"unknown study step.*'stabilty'"):
        _study(run, x, out, only=["stabilty"])


def test_another_study_is_refused_and_overwrite_leaves_nothing_stale(tmp_path):
    run, x = planted_run(tmp_path)
    out = tmp_path / "out"
    _study(run, x, out)
    stale = out / "figures" / "old_figure.png"
    stale.write_bytes(b"")
    with pytest.raises(OutputDirError, match=r"another study's results.*--overwrite"):
        _study(run, x[:1000], out)  # other held-out rows: another study
    assert stale.exists()
    res = _study(run, x[:1000], out, overwrite=True)
    assert res["source"]["eval_tokens"] == 1000 and not stale.exists()


def test_small_heldout_set_is_warned_about(tmp_path):
    run, x = planted_run(tmp_path, F=64, k=2)
    with pytest.warns(UserWarning, match=r"at least 320 rows"):
        res = _study(run, x[:100], tmp_path / "out", only=["firing"])
    assert "at least 320 rows" in res["warnings"][0]


KILL_SCRIPT = """
import os, signal, sys
import torch
from sae_fast.study import StudyConfig, study
from sae_fast.study.steps.candidates import CandidatesStep

def die(self, ctx):
    (ctx.dir("candidates") / "partial.npz").write_bytes(b"half-written")
    os.kill(os.getpid(), signal.SIGKILL)

CandidatesStep.compute = die
study(sys.argv[1], activations=torch.load(sys.argv[2]), out_dir=sys.argv[3], synthetic=False, progress=False,
      config=StudyConfig(**{FAST}))
"""


def test_kill_9_mid_step_resumes_at_that_step(tmp_path, computed):
    import torch

    run, x = planted_run(tmp_path)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "out"
    script = textwrap.dedent(KILL_SCRIPT).replace("{FAST}", repr(FAST))
    proc = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "x.pt"), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    before = NAMES[: NAMES.index("candidates")]
    assert all((out / n / MARKER).is_file() for n in before)
    assert not (out / "candidates" / MARKER).exists() and (out / "candidates" / "partial.npz").exists()
    assert not (out / "results.json").exists()
    res = _study(run, x, out)
    assert computed == NAMES[NAMES.index("candidates"):]  # resumed at the killed step; earlier ones loaded
    assert not (out / "candidates" / "partial.npz").exists() and "candidates" in res
    with np.load(out / "arrays.npz") as z:
        assert z["candidate_id"].shape == (3, 24)


class VerdictStep:
    """A step outside the package (as the science steps will be): its section opens the report."""

    name = "verdict"
    requires = ("stability",)
    opening = True

    def settings(self, cfg):
        return {"eps": cfg.eps}

    def run(self, ctx):
        share = ctx.result("stability").entries["stability"]["anchor"]["share_stable"]
        (ctx.dir(self.name) / "share.txt").write_text(str(share))
        return share

    def load(self, ctx):
        return float((ctx.out / self.name / "share.txt").read_text())

    def render(self, result, ctx):
        return [("h2", "Verdicts"), ("p", f"share stable {result:.3f}")]


def test_a_new_step_plugs_in_and_an_opening_section_comes_first(tmp_path):
    from sae_fast.study import Step

    run, x = planted_run(tmp_path)
    plan = [*default_steps(synthetic=False)[:2], VerdictStep()]
    assert isinstance(plan[-1], Step)
    res = _study(run, x, tmp_path / "out", steps=plan)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Verdicts") < md.index("## 1. Stability") and "share stable 0.500" in md
    assert res["missing_steps"] == [] and (tmp_path / "out" / "verdict" / MARKER).is_file()
