"""The exact backend (sae_fast.matching.exact): tiled sweep vs a float64 brute force, re-scored low-precision tiles."""

from __future__ import annotations

import pytest
import torch

from sae_fast.matching import match

from ._helpers import brute, planted, unit


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_equals_float32_argmax(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8192, 512, generator=g), torch.randn(16384, 512, generator=g)
    m = match(a.cuda(), b.cuda(), both=True, dtype=dtype)
    ref = match(a, b, both=True, dtype=torch.float32, device="cpu")
    assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
    assert torch.allclose(m.cos_ab, ref.cos_ab, atol=1e-5)
