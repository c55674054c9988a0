"""The dose-response step through the study pipeline, on planted runs whose p̂ levels are built in: with a planted
trend (cross-seed subspace sharing rising as p̂ falls) the step's saved result shows it; on the negative control
(same p̂ levels, no shared subspace) it does not."""

from __future__ import annotations

import json

import pytest

from ._planted import planted_dose_run

RANKS = ("4", "8")


def _dose(tmp_path_factory, grouped: bool) -> dict:
    from sae_fast import study
    from sae_fast.study.config import StudyConfig
    from sae_fast.study.steps import default_steps
    from sae_fast.study.steps.dose_response import DoseOptions, DoseResponseStep

    tmp = tmp_path_factory.mktemp("dose_grouped" if grouped else "dose_control")
    run, x = planted_dose_run(tmp, grouped=grouped)
    # 132 latents per seed: the default cap on the null's sample (1/8 of a bin's outside pool of ~90) would leave
    # n = 10 for every bin; a quarter keeps n = 16 (half the smallest bin), enough to see half a group at p̂ = 1/3
    plan = [DoseResponseStep(DoseOptions(max_outside_share=0.25), requires=s.requires) if s.name == "dose_response"
            else s for s in default_steps(False)]
    res = study(run, activations=x, out_dir=tmp / "study", progress=False, synthetic=False, only=["dose_response"],
                config=StudyConfig(ranks=(4, 8)), steps=plan)
    saved = json.loads((tmp / "study" / "dose_response" / "section.json").read_text())["dose_response"]
    assert saved == res["dose_response"]  # what the step saved is what the study reports
    return saved


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    return _dose(tmp_path_factory, grouped=True)


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> dict:
    return _dose(tmp_path_factory, grouped=False)


def _excess(dose: dict, r: str) -> list[float]:
    return [b["ranks"][r]["excess"] for b in dose["p_hat"]["bins"]]


def test_the_planted_trend_shows_in_the_saved_result(planted):
    bins = planted["p_hat"]["bins"]
    assert [b["lo"] for b in bins] == [0.0, 0.05, 0.5, 0.95] and not any(b["skipped"] for b in bins)
    assert planted["null_excludes"] == "candidate subspace members"
    # the four built-in p̂ levels fill the four bins (the shared ones exactly: 3 blocks of 11 latents each)
    assert bins[3]["sizes"] == [33] * 4 and all(min(b["sizes"]) >= 20 for b in bins)
    for r in RANKS:
        ex = _excess(planted, r)
        low = bins[0]["ranks"][r]
        # p̂ = 0: the whole group; no null draw reaches it (p at its floor 1/11 with the step's 10 draws)
        assert low["excess_lo"] > 0.1 and low["p_value"] == pytest.approx(1 / 11)
        assert ex[0] > ex[1] + 0.1 and bins[1]["ranks"][r]["excess_lo"] > 0  # p̂ = 1/3: half of it
        assert ex[1] > max(ex[2], ex[3]) and max(abs(ex[2]), abs(ex[3])) < 0.05  # p̂ >= 2/3: none
        assert planted["p_hat"]["trend"][r] < -0.5


def test_the_negative_control_shows_no_trend(control):
    bins = control["p_hat"]["bins"]
    assert [b["sizes"] for b in bins] == [[33] * 4] * 4 and not any(b["skipped"] for b in bins)
    for r in RANKS:
        ex = _excess(control, r)
        assert max(abs(e) for e in ex) < 0.05 and max(ex) - min(ex) < 0.05  # flat, at the null
        assert bins[0]["ranks"][r]["excess_lo"] < 0.05  # the low-p̂ bin shows no planted excess
