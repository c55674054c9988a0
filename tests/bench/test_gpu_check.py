"""bench/gpu_check.sh: its dry run (every stage at tiny shapes on the CPU) passes and leaves the folder the device
tool can bring back; a stage over its limit does not stop the next; bad arguments fail before any work; and the
results.md builder reads stage logs right."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STAGES = ["setup", "step", "match", "tests", "tests-2m20"]
FILES = {f"{s}.log" for s in STAGES} | {"build.log", "results.md"}
RETURNABLE = re.compile(r"^[A-Za-z0-9._-]+$")  # names the device tool brings back (at most 8 files)


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def _summary():
    spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "bench" / "gpu_check" / "summary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_the_tables(tmp_path: Path) -> None:
    out = _run("--dry-run", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert names == FILES and len(names) <= 8 and all(RETURNABLE.match(n) for n in names)
    assert all(p.is_file() for p in tmp_path.iterdir())
    results = (tmp_path / "results.md").read_text()
    for stage in STAGES:
        assert re.search(rf"^\| {re.escape(stage)} \| \d+ \| \d+ \| ok \|$", results, re.M), stage
        assert stage == "setup" or f"## {stage}: ok" in results
    step_rows = re.findall(r"^\| 64 \| 512 \| (bf16-signsgd|bf16-lmadam) \|.*\| ok \|$", results, re.M)
    assert step_rows == ["bf16-signsgd", "bf16-lmadam"]
    for case in ("random", "planted"):
        for method in ("exact bfloat16 + fp32 re-score, both", "exact fused Triton kernel float16 + fp32 certify, both",
                       "faiss IndexFlatIP (cpu), A->B"):
            assert re.search(rf"^\| {case} \| 2\^8 \| 32 \| {re.escape(method)} \|.*\| 1\.0000 \|", results, re.M)
    assert re.search(r"^\| gpu-marked tests collected \(-k 'not 4096x2'\) \| ok: [1-9]", results, re.M)
    assert re.search(r"^\| gpu-marked tests collected \(-k '4096x2'\) \| ok: [1-9]", results, re.M)
    assert "FAILED" not in results


def test_a_stage_over_its_limit_does_not_stop_the_next(tmp_path: Path) -> None:
    out = _run("--dry-run", "--out", str(tmp_path), "--only", "step,match", env={"GPU_CHECK_BUDGETS": "step=1"})
    assert out.returncode == 1
    results = (tmp_path / "results.md").read_text()
    assert re.search(r"^\| setup \| 30 \| \d+ \| ok \|$", results, re.M), results
    assert re.search(r"^\| step \| 1 \| \d+ \| STOPPED at its limit \(rc 124\) \|$", results, re.M), results
    assert re.search(r"^\| match \| 80 \| \d+ \| ok \|$", results, re.M), results
    assert "last 15 lines of step.log" in results and "## match: ok" in results


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--dry-run"], {"OUT": ""}, "no results folder"),
    (["--dry-run", "--out", "{tmp}", "--only", "step,warp"], {}, "--only: unknown stage 'warp'"),
    (["--dry-run", "--out", "{tmp}"], {"GPU_CHECK_BUDGETS": "stepp=3"}, "GPU_CHECK_BUDGETS: unknown stage 'stepp'"),
    (["--dry-run", "--out", "{tmp}"], {"GPU_CHECK_BUDGETS": "step=soon"}, "'step=soon' is not NAME=SECONDS"),
    (["--dry-run", "--out", "{tmp}", "--only", "stability"], {}, "stage 'stability' runs on a GPU only"),
    (["--dry-run", "--out", "{tmp}/done"], {}, "already holds results.md"),
    (["--dry-run", "--frobnicate"], {}, "unknown argument '--frobnicate'"),
])
def test_bad_arguments_fail_before_any_work(tmp_path: Path, args: list[str], env: dict, message: str) -> None:
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.md").write_text("earlier results\n")
    out = _run(*[a.replace("{tmp}", str(tmp_path)) for a in args], env=env, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert (tmp_path / "done" / "results.md").read_text() == "earlier results\n"
    assert not any(tmp_path.glob("*.log"))


PYTEST_LOG = """\
....F
=================================== FAILURES ===================================
____ test_fused_kernel_on_gpu[torch.bfloat16] ____
E   AssertionError: assert (False)
============================= slowest durations ==============================
41.20s call     tests/kernels/test_kernels_gpu.py::test_training_200_steps_matches_reference
12.00s call     tests/kernels/test_match_max.py::test_fused_kernel_on_gpu[torch.bfloat16]

=========================== short test summary info ============================
PASSED tests/test_angles.py::test_cuda_path_matches_cpu
FAILED tests/kernels/test_match_max.py::test_fused_kernel_on_gpu[torch.bfloat16] - AssertionError
1 failed, 4 passed, 1 skipped, 187 deselected in 80.03s (0:01:20)
"""


def test_findings_take_pytest_summary_failures_and_slowest_tests() -> None:
    found = _summary().findings(PYTEST_LOG)
    assert "pytest: 1 failed, 4 passed, 1 skipped, 187 deselected in 80.03s (0:01:20)" in found
    assert "FAILED tests/kernels/test_match_max.py::test_fused_kernel_on_gpu[torch.bfloat16] - AssertionError" in found
    assert "    41.20s call     tests/kernels/test_kernels_gpu.py::test_training_200_steps_matches_reference" in found
    assert not any("PASSED" in line for line in found)


def test_findings_leave_out_an_empty_durations_list() -> None:
    log = ("=== slowest durations ===\n\n(54 durations < 0.005s hidden.  Use -vv to show these durations.)\n"
           "27 skipped, 433 deselected in 6.34s\n")
    assert _summary().findings(log) == ["pytest: 27 skipped, 433 deselected in 6.34s"]


def test_findings_keep_tables_and_the_checks_that_failed() -> None:
    log = "noise\ndevice: X\n| a | b |\n|---|---|\n| 1 | 2 |\nmore noise\nchecks failed:\n(64, 512) bad loss\n"
    assert _summary().findings(log) == ["device: X", "", "| a | b |", "|---|---|", "| 1 | 2 |", "checks failed:",
                                        "(64, 512) bad loss"]


def test_a_malformed_stage_record_names_the_file_and_line(tmp_path: Path) -> None:
    records = tmp_path / "stages.tsv"
    records.write_text("setup\t30\t2\t0\nstep\t150\tslow\t0\n")
    with pytest.raises(SystemExit, match=r"stages.tsv:2: expected 'name<TAB>budget<TAB>seconds<TAB>rc'"):
        _summary().read_records(records)
