"""Test configuration: the Triton interpreter on machines without CUDA, and the `gpu` marker."""

import os

import torch

# Must happen before any module defining @triton.jit kernels is imported (deps.md §2.1).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped, never passed, without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread is several times faster than two (and immune to a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli_fails(capsys):
    """``cli_fails(argv, pattern, status=1)``: `sae-fast ARGV` exits with ``status`` after printing one line
    ``sae-fast <command>: error: ...`` on stderr that matches the regex ``pattern``; returns that line."""
    import re

    from sae_fast.cli import main

    def run(argv: list[str], pattern: str, status: int = 1) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == status, err
        assert err and err[-1].startswith(f"sae-fast {argv[0]}: error: "), err
        assert re.search(pattern, err[-1]), (pattern, err[-1])
        return err[-1]

    return run
