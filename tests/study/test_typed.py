"""Typed step results: the checker, every step's real entries against its TypedDict (at save and at load), and
the report erroring on a missing result instead of dropping its row."""

from __future__ import annotations

import json
import shutil
from typing import NotRequired, TypedDict

import pytest

from sae_fast.study.step import StepError
from sae_fast.study.typed import MissingResultError, check_typed

from ._planted import planted_run

D, F, K, SHARED = 16, 24, 4, 12


class Leaf(TypedDict):
    value: float | None


class Variant(TypedDict):
    skipped: str


class Full(TypedDict):
    skipped: None
    rows: list[Leaf]
    by_name: dict[str, Leaf]


class Outer(TypedDict):
    """A required nested part, an optional one, a union with a skipped variant."""

    inner: Leaf
    optional: NotRequired[Leaf]
    either: Full | Variant


def _outer() -> dict:
    return {"inner": {"value": 1.0}, "either": {"skipped": None, "rows": [{"value": 0.5}],
                                                "by_name": {"a": {"value": None}}}}


def test_checker_names_the_dotted_path_of_a_missing_nested_key():
    check_typed(_outer(), Outer, "step 'x'")  # complete: no error
    value = _outer()
    del value["either"]["rows"][0]["value"]
    with pytest.raises(StepError, match=r"step 'x'.*`r\.either\.rows\.0\.value`") as err:
        check_typed(value, Outer, "step 'x'", root="r")
    assert err.value.path == "r.either.rows.0.value"
    value = _outer()
    del value["either"]["by_name"]["a"]["value"]
    with pytest.raises(MissingResultError, match=r"`either\.by_name\.a\.value`"):
        check_typed(value, Outer, "step 'x'")
    with pytest.raises(MissingResultError, match=r"`inner`"):
        check_typed({"either": {"skipped": "why"}}, Outer, "step 'x'")


def test_checker_allows_absent_not_required_parts_and_typed_nulls():
    check_typed({"inner": {"value": None}, "either": {"skipped": "no data"}}, Outer, "s")  # the skipped variant
    with pytest.raises(MissingResultError, match=r"`optional\.value`"):  # present: checked
        check_typed({**_outer(), "optional": {}}, Outer, "s")
    value = _outer()
    del value["either"]["rows"]  # an incomplete result is not taken for the skipped variant
    with pytest.raises(MissingResultError, match=r"`either\.rows`"):
        check_typed(value, Outer, "s")


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Every step but synthetic on 4 small seeds, pooling without refit or fine-tuning."""
    from sae_fast import study
    from sae_fast.seed_study import StudyConfig

    root = tmp_path_factory.mktemp("typed")
    run, x = planted_run(root, num_seeds=4, d=D, F=F, k=K, shared=SHARED, rows=3000)
    cfg = StudyConfig(ranks=(2, 4), n_random=1, refit_steps=0, finetune_steps=0)
    res = study(run, activations=x, out_dir=root / "study", synthetic=False, progress=False, config=cfg)
    return root / "study", res, cfg


def test_every_step_declares_its_entries_and_its_saved_entries_check(small_study):
    from sae_fast.study.steps import default_steps
    from sae_fast.study.steps.section import NoEntries, SectionStep

    out, res, _ = small_study
    for step in default_steps(synthetic=False):
        assert isinstance(step, SectionStep)
        assert step.entries_type is not NoEntries or step.name in ("matching", "firing"), step.name
        entries = json.loads((out / step.name / "section.json").read_text())
        check_typed(entries, step.entries_type, step.name)
        for key in entries:  # results.json holds what the step saved
            assert res[key] == entries[key]


def test_a_saved_result_missing_a_key_is_refused_with_redo(small_study, tmp_path):
    from sae_fast.study.steps.stability import StabilityStep

    out = tmp_path / "study"
    shutil.copytree(small_study[0] / "stability", out / "stability")
    section = out / "stability" / "section.json"
    entries = json.loads(section.read_text())
    del entries["stability"]["anchor"]["best_cos_mean"]
    section.write_text(json.dumps(entries))
    ctx = type("Ctx", (), {"out": out})()
    with pytest.raises(StepError, match=r"stability\.anchor\.best_cos_mean.*--redo stability"):
        StabilityStep().load(ctx)


def test_a_step_leaving_out_a_result_fails_before_saving(small_study, tmp_path, monkeypatch):
    from sae_fast.study.steps.classifier import ClassifierStep
    from sae_fast.study.steps.section import Section

    monkeypatch.setattr(ClassifierStep, "compute", lambda self, ctx: Section({"classifier": {"pairs": []}}))
    ctx = type("Ctx", (), {"out": tmp_path, "dir": lambda self, name: tmp_path / name})()
    with pytest.raises(StepError, match=r"'classifier'.*`classifier\.C` \(and 2 more\)"):
        ClassifierStep().run(ctx)
    assert not (tmp_path / "classifier").exists()


def _report_of(results: dict, folder) -> str:
    from sae_fast.study.report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return write_report(folder)["markdown"].read_text()


def test_the_report_raises_naming_a_missing_number_and_its_step(small_study, tmp_path):
    _, res, _ = small_study
    md = _report_of(res, tmp_path / "complete")
    assert "`stability.anchor.share_stable`" in md
    broken = json.loads(json.dumps(res))
    del broken["stability"]["anchor"]["share_stable"]
    with pytest.raises(MissingResultError, match=r"'stability'.*`stability\.anchor\.share_stable`.*--redo stability"):
        _report_of(broken, tmp_path / "broken")
    broken = json.loads(json.dumps(res))
    del broken["seed_count"]  # a self-rendered step reads results.json through lookup.columns, which raises too
    from sae_fast.study.lookup import columns

    with pytest.raises(MissingResultError, match=r"`seed_count\.curve\.0\.agreement`"):
        columns(broken, ["seed_count.curve.0"], [("agreement", "agreement")])


def test_pooling_without_refit_renders_without_refit_rows(small_study, tmp_path):
    out, res, cfg = small_study
    assert cfg.refit_steps == 0 and "single_refit" not in res["pooling"]
    assert "ev_refit" not in res["pooling"]["pooled"] and "finetune" not in res["pooling"]["pooled"]
    md = (out / "report.md").read_text()
    assert "`pooling.pooled.ev`" in md and "`pooling.single_share_stable_mean`" in md
    assert "ev_refit" not in md and "finetune" not in md and "No refit or fine-tuning was run" in md
    assert _report_of(res, tmp_path / "again").count("`pooling.") == md.count("`pooling.")


def test_sections_of_steps_that_did_not_run_are_not_rendered(small_study, tmp_path):
    _, res, _ = small_study
    partial = {k: v for k, v in res.items() if k not in ("pooling", "classifier")}
    partial["timings_seconds"] = {k: v for k, v in res["timings_seconds"].items() if k not in ("pooling", "classifier")}
    md = _report_of(partial, tmp_path / "partial")
    assert "Pooling unique features" not in md and "Stability classifier" not in md
    assert "`stability.anchor.share_stable`" in md


def test_every_entries_type_resolves_down_to_its_leaves():
    """Each step's TypedDict and every type nested in it can be read (names resolvable in their modules)."""
    from typing import get_args, get_type_hints, is_typeddict

    from sae_fast.study.steps import default_steps

    seen: set = set()

    def walk(tp) -> None:
        if is_typeddict(tp) and tp not in seen:
            seen.add(tp)
            for hint in get_type_hints(tp, include_extras=True).values():
                walk(hint)
        for arg in get_args(tp):
            walk(arg)

    for step in default_steps(synthetic=True):
        walk(step.entries_type)
    assert len(seen) > 60
