"""Every `test_*` function in bench/ checks its outputs: a plain `pytest bench/` must not count a benchmark that
asserts nothing as a passing test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _checks_something(func: ast.FunctionDef, helpers: dict[str, ast.FunctionDef], seen: set[str]) -> bool:
    """An `assert`, a call of an `assert...` function (torch.testing.assert_close, ...), `pytest.raises`, or a call
    of a function of the same module that checks something itself."""
    seen.add(func.name)
    for node in ast.walk(func):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name.startswith("assert") or name == "raises":
                return True
            if name in helpers and name not in seen and _checks_something(helpers[name], helpers, seen):
                return True
    return False


def unchecked_tests(source: str) -> list[str]:
    """Names of the module-level `test_*` functions in `source` that check nothing."""
    functions = {node.name: node for node in ast.parse(source).body
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    return [name for name, node in functions.items()
            if name.startswith("test_") and not _checks_something(node, functions, set())]


def test_the_check_tells_asserting_from_empty_tests() -> None:
    source = '''
def test_times_only(benchmark):
    benchmark(lambda: 1)

def test_asserts(benchmark):
    assert benchmark(lambda: 1) == 1

def test_close():
    torch.testing.assert_close(1.0, 1.0)

def test_raises():
    with pytest.raises(ValueError):
        int("x")

def helper_without_assert():
    pass

def check_result(x):
    assert x == 1

def test_through_a_checking_helper():
    check_result(1)

def test_through_a_helper_that_checks_nothing():
    helper_without_assert()

def test_recursive(n=1):
    return test_recursive(n - 1) if n else None
'''
    assert unchecked_tests(source) == ["test_times_only", "test_through_a_helper_that_checks_nothing", "test_recursive"]


@pytest.mark.parametrize("path", sorted(BENCH.glob("test_*.py")), ids=lambda p: p.name)
def test_every_bench_test_checks_its_outputs(path: Path) -> None:
    assert unchecked_tests(path.read_text()) == [], f"{path.name}: test functions that assert nothing"
