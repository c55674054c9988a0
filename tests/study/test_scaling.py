"""The study's memory grows linearly with the dictionary size F: peak traced memory at F and 4F differ by well
under 16× (a dense (F × F) or (N × F) array anywhere would make it about 16×)."""

from __future__ import annotations

import tracemalloc

import pytest

from sae_fast.study import StudyConfig, study

from ._planted import FAST, planted_run


def peak_traced_bytes(tmp_path, F: int, trace: bool = True) -> int:
    """Peak Python-heap (numpy included) bytes allocated while the study runs on a planted run of size F."""
    run, x = planted_run(tmp_path / f"F{F}", num_seeds=3, d=32, F=F, k=8, shared=F // 8, rows=2000)
    cfg = StudyConfig(**{**FAST, "coactivation_rows": 2000, "batch_size": 512})
    if trace:
        tracemalloc.start()
    try:
        study(run, activations=x, out_dir=tmp_path / f"out{F}-{trace}", synthetic=False, progress=False,
              report=False, config=cfg)
        return tracemalloc.get_traced_memory()[1] if trace else 0
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_peak_memory_grows_linearly_with_F(tmp_path):
    peak_traced_bytes(tmp_path, 64, trace=False)  # imports and caches happen here, not in the measured runs
    small, large = peak_traced_bytes(tmp_path, 256), peak_traced_bytes(tmp_path, 1024)
    assert large / small < 8, f"peak traced memory {small / 2**20:.1f} MiB at F=256, {large / 2**20:.1f} MiB at 1024"
