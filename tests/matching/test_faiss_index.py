"""The faiss backend (sae_fast.matching.faiss_index): indexes against the exact sweep, recall, reuse, CAGRA."""

from __future__ import annotations

import pytest
import torch

import sae_fast.matching as matching
from sae_fast.matching import FaissIndex, default_nlist, match, recall_at_1

from ._helpers import needs_faiss, planted, unit


@needs_faiss
def test_faiss_flat_agrees_with_exact_and_ivf_recall_is_measured() -> None:
    a, b, _inv = planted(4096, 64, 0.8, seed=3)
    exact = match(a, b, both=True, backend="exact")
    flat = match(a, b, both=True, backend="faiss", index="flat")
    assert torch.equal(flat.index_ab, exact.index_ab) and torch.equal(flat.index_ba, exact.index_ba)
    assert torch.allclose(flat.cos_ab, exact.cos_ab, atol=1e-6)
    assert flat.backend.startswith("faiss IndexFlatIP on cpu")
    ivf = FaissIndex(b, "ivf", nlist=64)
    recalls = {}
    for nprobe in (1, 16):
        ivf.set_nprobe(nprobe)
        recalls[nprobe] = recall_at_1(match(a, None, backend="faiss", index_b=ivf), exact)
    assert recalls[16] >= 0.99 and recalls[16] > recalls[1] > 0.3, recalls
    sampled = match(a, None, backend="faiss", index_b=ivf, recall_sample=500)
    assert sampled.info["recall_rows"] == 500 and abs(sampled.info["recall_at_1"] - recalls[16]) < 0.03
    sq = match(a, b, backend="faiss", index="ivf_sq", nlist=64, nprobe=16)
    assert recall_at_1(sq, exact) >= 0.99
    assert "nprobe=16" in sq.backend
    # returned cosines are float32 cosines of the returned rows
    ok = sq.index_ab[:, 0] >= 0
    direct = (unit(a)[ok] * unit(b)[sq.index_ab[ok, 0]]).sum(1)
    assert torch.allclose(sq.cos_ab[ok, 0], direct, atol=1e-6)


@needs_faiss
def test_faiss_hnsw_and_absolute() -> None:
    a, b, inv = planted(1000, 32, 0.9, seed=4)
    b[::2] *= -1  # every other partner flipped: only |cos| finds them
    exact_abs = match(a, b, k=2, absolute=True)
    for kind in ("flat", "hnsw"):
        m = match(a, b, k=2, absolute=True, backend="faiss", index=kind)
        assert recall_at_1(m, exact_abs) >= (1.0 if kind == "flat" else 0.95)
    assert torch.equal(exact_abs.index_ab[:, 0], inv)
    signed = match(a, b)
    assert (signed.best_ab < 0.85).sum() == 500


@needs_faiss
def test_index_built_once_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _ = planted(512, 32, 0.8, seed=5)
    index = FaissIndex(b, "flat")
    built = []

    class Counting(FaissIndex):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(matching, "FaissIndex", Counting)
    m1 = match(a, None, backend="auto", index_b=index)
    m2 = match(a[:100], None, index_b=index)
    assert not built  # nothing is built inside match(index_b=...)
    assert m1.info["picked"] == "faiss" and torch.equal(m1.index_ab[:100], m2.index_ab)
    ivf = FaissIndex(b, "ivf", nlist=8, nprobe=2)
    match(a, None, backend="faiss", index_b=ivf, nprobe=8)
    assert ivf.nprobe == 2 and ivf.index.nprobe == 2  # the caller's nprobe is restored
    match(a, b, backend="faiss", index="flat")
    assert len(built) == 1


def test_default_nlist() -> None:
    assert default_nlist(65536) == 1024 and default_nlist(1000) == 25 and default_nlist(10) == 1


@needs_faiss
def test_cagra_needs_a_gpu_faiss_with_cuvs() -> None:
    from sae_fast.matching import faiss_has_cagra

    if faiss_has_cagra():
        pytest.skip("this faiss has CAGRA: see test_cagra_recall_on_gpu")
    with pytest.raises(ValueError, match="cuVS"):
        FaissIndex(torch.randn(64, 16), "cagra")


@pytest.mark.gpu
def test_cagra_recall_on_gpu() -> None:
    from sae_fast.matching import faiss_has_cagra

    if not faiss_has_cagra():
        pytest.skip("needs a GPU faiss built with cuVS (GpuIndexCagra)")
    a, b, inv = planted(4096, 64, 0.8)
    index = FaissIndex(b, "cagra")
    m = match(a, None, backend="faiss", index_b=index)
    assert "GpuIndexCagra" in m.backend and float((m.index_ab[:, 0] == inv).float().mean()) >= 0.95
