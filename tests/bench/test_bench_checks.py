"""The checks the GPU check's benchmarks apply to what they measure (bench/test_sae_step.py, bench/test_match.py):
planted results that are wrong are reported, right ones pass, approximate methods are not held to exactness."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


step = _load("test_sae_step")
matchbench = _load("test_match")


def _res(ours: float, dense: float, finite: bool = True) -> dict:
    return {"sae_fast": step.Measured("1.0", "-", ours, finite), "dense": step.Measured("2.0", "-", dense),
            "sparsify": step.Measured("n/a", "-")}


def test_step_check_passes_equal_first_losses() -> None:
    assert step.check(_res(0.5203, 0.5204)) == []


def test_step_check_reports_a_first_loss_off_the_dense_baseline() -> None:
    problems = step.check(_res(0.52, 0.60))
    assert len(problems) == 1 and "first loss sae_fast 0.52 vs dense 0.6" in problems[0]


def test_step_check_reports_non_finite_losses_and_skips_what_did_not_run() -> None:
    res = _res(math.nan, 0.5, finite=False)
    assert step.check(res) == ["sae_fast: non-finite loss", "first loss sae_fast nan vs dense 0.5"]
    res["dense"] = step.Measured("OOM", "-")
    assert step.check(res) == ["sae_fast: non-finite loss"]


def _row(case: str, method: str, recall: float | None) -> object:
    return matchbench.Row("cuda", case, 2**17, 2048, method, 1.0, recall)


def test_match_check_holds_exact_methods_to_every_row() -> None:
    rows = [_row("random", "exact fused Triton kernel bfloat16 + fp32 certify, both", 0.9999),
            _row("random", "exact float16 + fp32 re-score, both", 1.0)]
    problems = matchbench.check_rows(rows)
    assert len(problems) == 1 and "exact fused Triton kernel bfloat16" in problems[0] and "0.9999" in problems[0]


def test_match_check_holds_exhaustive_methods_to_planted_partners_only() -> None:
    rows = [_row("random", "plain bf16 chunked GEMM + arg-max (no re-score), A->B", 0.95),
            _row("planted", "plain bf16 chunked GEMM + arg-max (no re-score), A->B", 0.95),
            _row("planted", "faiss knn_gpu bf16, A->B", 1.0),
            _row("planted", "faiss IVF1024,Flat nprobe=4, A->B", 0.5),
            _row("random", "exact float32, both directions", None)]
    problems = matchbench.check_rows(rows)
    assert len(problems) == 1 and problems[0].startswith("planted 2^17 x 2048: plain bf16 chunked GEMM")


def test_topk_merge_bench_asserts_on_a_small_size() -> None:
    """bench/test_topk_merge.py: the C++ and torch merges and the full-matrix top-m agree at a small size."""
    merge = _load("test_topk_merge")
    row = merge.run(512, 24, 3, 1)[0]
    assert row.startswith("| (512, 24) | 3 |") and row.count("|") == 8
