"""Tests of sae_fast.matching: exact tiled top-k in both directions, low-precision re-scoring, faiss backends."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import sae_fast
import sae_fast.matching as matching
from sae_fast.matching import FaissIndex, Match, default_nlist, faiss_available, match, match_many, recall_at_1

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="needs faiss (pip install 'sae_fast[faiss]')")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def planted(f: int, d: int, cos: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random dictionary A and B = a permuted noisy copy with cos(A[i], B[inv[i]]) ~ cos. Returns A, B, inv."""
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(f, d, generator=g))
    perm = torch.randperm(f, generator=g)
    noise = unit(torch.randn(f, d, generator=g))
    noise = unit(noise - (noise * a).sum(1, keepdim=True) * a)  # orthogonal to a
    b = (cos * a + math.sqrt(1 - cos**2) * noise)[perm]
    return a, b, torch.argsort(perm)


def brute(a: torch.Tensor, b: torch.Tensor, k: int, absolute: bool = False) -> tuple[torch.Tensor, ...]:
    s = unit(a.double()) @ unit(b.double()).T
    if absolute:
        s = s.abs()
    rv, ri = s.topk(k, dim=1)
    cv, ci = s.topk(k, dim=0)
    return rv, ri, cv.T, ci.T


def test_planted_exact_recall_is_one_both_directions() -> None:
    a, b, inv = planted(1024, 64, 0.8)
    m = match(a, b, both=True, backend="exact", block_rows=300, block_cols=500)
    assert torch.equal(m.index_ab[:, 0], inv)
    assert torch.equal(m.index_ba[:, 0], torch.argsort(inv))
    assert torch.allclose(m.best_ab, torch.full((1024,), 0.8), atol=1e-5)
    assert bool(m.mutual(0.7).all())
    assert m.backend.startswith("exact: torch float32 tiles 300x500 on cpu")


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("shape", [(257, 300, 3), (500, 130, 2), (64, 64, 1)])
def test_exact_matches_brute_force(shape: tuple[int, int, int], absolute: bool) -> None:
    fa, fb, k = shape
    g = torch.Generator().manual_seed(fa + fb)
    a, b = torch.randn(fa, 48, generator=g) * 3, torch.randn(fb, 48, generator=g)
    m = match(a, b, k=k, both=True, absolute=absolute, backend="exact", block_rows=100, block_cols=77)
    rv, ri, cv, ci = brute(a, b, k, absolute)
    assert torch.equal(m.index_ab, ri) and torch.equal(m.index_ba, ci)
    assert torch.allclose(m.cos_ab.double(), rv, atol=1e-5) and torch.allclose(m.cos_ba.double(), cv, atol=1e-5)
    assert m.index_ab.dtype == torch.int64 and m.cos_ab.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tiles_return_the_float32_top_k(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 256, generator=g), torch.randn(2000, 256, generator=g)
    m = match(a, b, k=2, both=True, dtype=dtype, block_rows=128, block_cols=512)
    rv, ri, _cv, ci = brute(a, b, 2)
    assert torch.equal(m.index_ab, ri) and torch.equal(m.index_ba, ci)
    assert torch.allclose(m.cos_ab.double(), rv, atol=1e-6)
    assert m.info["tolerance"] > 0 and "re-scored in float32" in m.backend


def test_near_ties_are_rescored_in_float32() -> None:
    """B holds pairs of rows whose cosines with a row of A differ by ~1e-4: bf16 cannot order them."""
    g = torch.Generator().manual_seed(2)
    d = 128
    a = unit(torch.randn(200, d, generator=g))
    other = unit(torch.randn(200, d, generator=g))
    other = unit(other - (other * a).sum(1, keepdim=True) * a)
    close = 0.6 * a + 0.8 * other  # cos 0.6 exactly (up to rounding)
    closer = unit(0.6001 * a + 0.8 * other)  # cos slightly larger
    b = torch.cat([close, closer, unit(torch.randn(600, d, generator=g))])
    low = (unit(a).bfloat16().float() @ unit(b).bfloat16().float().T).bfloat16().float()
    assert (low.argmax(1) != torch.arange(200, 400)).any()  # plain bf16 gets some rows wrong
    m = match(a, b, dtype=torch.bfloat16, both=True)
    assert torch.equal(m.index_ab[:, 0], torch.arange(200, 400))  # fixed by re-scoring the 8 candidates
    # with 2 candidates the second one is within the rounding bound: every row is recomputed in float32
    m2 = match(a, b, dtype=torch.bfloat16, candidates=2)
    assert m2.info["rescored_rows"] == 200 and torch.equal(m2.index_ab[:, 0], torch.arange(200, 400))
    _, _ri, _, ci = brute(a, b, 1)
    assert torch.equal(m.index_ba, ci)


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


def test_auto_says_what_it_picked(caplog: pytest.LogCaptureFixture) -> None:
    a, b, _ = planted(128, 16, 0.8)
    with caplog.at_level(logging.INFO, logger="sae_fast.matching"):
        m = match(a, b, device="cpu")
    assert m.info["picked"] == "exact" and "backend='auto' -> exact" in caplog.text
    assert "flop <=" in m.info["picked_reason"]


@needs_faiss
def test_auto_picks_ivf_above_the_size_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _ = planted(2048, 32, 0.8, seed=6)
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 2.0 * 2048 * 2048 * 32 - 1)
    m = match(a, b, both=True, device="cpu")
    assert m.info["picked"] == "faiss" and "IndexIVFFlat" in m.backend and "faiss installed" in m.info["picked_reason"]
    exact = match(a, b, both=True, backend="exact")
    back = Match(m.index_ba, m.cos_ba, None, None, "", info={})
    assert m.info["recall_rows"] == 1000 and abs(m.info["recall_at_1"] - recall_at_1(m, exact)) < 0.05
    assert abs(m.info["recall_at_1_ba"] - recall_at_1(back, Match(exact.index_ba, exact.cos_ba, None, None, ""))) < 0.05
    assert "recall_at_1" not in match(a, b, device="cpu", recall_sample=0).info
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 2.0 * 2048 * 2048 * 32)
    assert match(a, b, device="cpu").info["picked"] == "exact"
    monkeypatch.setattr(matching, "faiss_available", lambda: False)
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 1.0)
    m = match(a, b, device="cpu")
    assert m.info["picked"] == "exact" and "not installed" in m.info["picked_reason"]
    assert matching.choose_backend("auto", torch.device("cuda"), False, 1e20)[0] == "exact"


def test_package_function_survives_module_import() -> None:
    import sae_fast.matching as module

    a, b, _ = planted(64, 32, 0.9)
    assert isinstance(sae_fast.match(a, b), Match)
    assert sae_fast.match is module.match


def test_numpy_inputs_and_float64() -> None:
    a, b, inv = planted(100, 32, 0.9)
    m = match(a.double().numpy(), np.asarray(b))
    assert torch.equal(m.index_ab[:, 0], inv)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "err", "text"),
    [
        (torch.ones(4, 3), torch.ones(4, 5), {}, ValueError, "same d"),
        (torch.ones(4), torch.ones(4, 5), {}, ValueError, "shape \\(F, d\\)"),
        (torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3), {}, TypeError, "floating point"),
        (torch.tensor([[1.0, 0.0], [math.nan, 1.0]]), torch.ones(2, 2), {}, ValueError, "NaN or inf"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2), {}, ValueError, "zero rows"),
        (torch.ones(4, 3), torch.ones(2, 3), {"k": 3}, ValueError, "k = 3"),
        (torch.ones(4, 3), torch.ones(2, 3), {"backend": "gpu"}, ValueError, "backend must be"),
        ([[1.0]], torch.ones(2, 1), {}, TypeError, "tensor or numpy"),
        (torch.ones(4, 3), torch.ones(4, 3), {"backend": "faiss", "index": "lsh"}, ValueError, "index kind"),
    ],
)
def test_bad_input(a, b, kwargs, err, text) -> None:
    with pytest.raises(err, match=text):
        match(a, b, **kwargs)


def test_cuda_matmul_flags_are_restored() -> None:
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32, flags.allow_fp16_reduced_precision_reduction
    flags.allow_tf32 = True
    try:
        a, b, inv = planted(64, 32, 0.9)
        assert torch.equal(match(a, b).index_ab[:, 0], inv)
        assert flags.allow_tf32 is True
    finally:
        flags.allow_tf32 = before[0]
    assert flags.allow_fp16_reduced_precision_reduction == before[1]


def test_default_nlist() -> None:
    assert default_nlist(65536) == 1024 and default_nlist(1000) == 25 and default_nlist(10) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_equals_float32_argmax(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8192, 512, generator=g), torch.randn(16384, 512, generator=g)
    m = match(a.cuda(), b.cuda(), both=True, dtype=dtype)
    ref = match(a, b, both=True, dtype=torch.float32, device="cpu")
    assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
    assert torch.allclose(m.cos_ab, ref.cos_ab, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"k": 3}, {"block_rows": 64, "block_cols": 100}, {"block_cols": 260, "k": 2},
                                    {"dtype": torch.float16}, {"dtype": torch.bfloat16, "block_cols": 130},
                                    {"absolute": True}], ids=str)
def test_match_many_equals_one_match_per_dictionary(kwargs: dict) -> None:
    """Stacked dictionaries (tiles holding several of them, or pieces of one) give per-dictionary results equal
    to separate calls, both directions, for any tile size and tile dtype."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 50, generator=g)
    bs = [torch.randn(130, 50, generator=g) for _ in range(5)]
    bs[2][7] = 2 * a[3]
    bs[4][9] = bs[4][8]  # an exact tie: the smaller local index must win
    ms = match_many(a, bs, both=True, **kwargs)
    assert len(ms) == 5 and ms[0].info["dictionaries"] == 5
    for b, m in zip(bs, ms):
        ref = match(a, b, both=True, **kwargs)
        assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
        torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-6, rtol=0)
        torch.testing.assert_close(m.cos_ba, ref.cos_ba, atol=1e-6, rtol=0)
    assert int(ms[2].index_ab[3, 0]) == 7
    stacked = torch.nn.functional.normalize(torch.cat(bs), dim=1)
    again = match_many(a, stacked, segment=130, **kwargs)
    assert all(torch.equal(x.index_ab, y.index_ab) for x, y in zip(again, ms))


def test_match_many_bad_input() -> None:
    a = torch.randn(10, 8)
    with pytest.raises(ValueError, match="segment"):
        match_many(a, torch.randn(30, 8), segment=7)
    with pytest.raises(ValueError, match="one shape"):
        match_many(a, [torch.randn(5, 8), torch.randn(6, 8)])
    with pytest.raises(ValueError, match="same d"):
        match_many(a, [torch.randn(5, 9)])
    with pytest.raises(ValueError, match="non-empty"):
        match_many(a, [])
    with pytest.raises(ValueError, match="k = 6"):
        match_many(a, [torch.randn(5, 8)], k=6)


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
