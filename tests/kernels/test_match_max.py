"""The fused GEMM + row/column max kernel (kernels/match_max.py) under the Triton interpreter on tiny shapes,
and match(kernel="triton") against the float32 reference."""

from __future__ import annotations

import pytest
import torch
from sae_fast.kernels.match_max import match_max

from sae_fast.matching import match, match_many

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b[7] = b[3]  # an exact tie between columns 3 and 7 for every row: the smaller index must win
    a[5] = a[2]
    return a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_best_and_second_best(dtype: torch.dtype) -> None:
    a, b = _inputs(70, 100, 40, seed=1)
    al, bl = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    rv, ri, r2, cv, ci, c2 = match_max(al, bl, block_m=32, block_n=32, block_k=16)
    s = al.float() @ bl.float().T
    rows, cols = s.topk(2, dim=1), s.topk(2, dim=0)
    torch.testing.assert_close(rv, rows.values[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(r2, rows.values[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(cv, cols.values[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(c2, cols.values[1], atol=1e-6, rtol=0)
    assert torch.equal(ri, s.argmax(1)) and torch.equal(ci, s.argmax(0))  # argmax: first of equal maxima
    assert bool((ri != 7).all()) and bool((ci != 5).all())


def test_kernel_rows_only_and_bad_input() -> None:
    a, b = _inputs(33, 65, 24, seed=2)
    _rv, ri, _r2, cv, ci, c2 = match_max(a, b, both=False, block_m=32, block_n=32, block_k=32)
    assert cv is None and ci is None and c2 is None
    assert torch.equal(ri, (a @ b.T).argmax(1))
    with pytest.raises(AssertionError, match="same K"):
        match_max(a, b[:, :10].contiguous())
    with pytest.raises(AssertionError, match="contiguous"):
        match_max(a, b.T.contiguous().T)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_segments(dtype: torch.dtype) -> None:
    """b = three dictionaries of 45 rows stacked: row results per dictionary (local indices, ties to the smaller),
    no tile straddling two dictionaries (45 is not a multiple of the 32-row tile), columns as without segments."""
    a, b = _inputs(70, 135, 40, seed=5)
    b[45 + 20] = b[45 + 11]
    al, bl = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    rv, ri, r2, cv, ci, _ = match_max(al, bl, segment=45, block_m=32, block_n=32, block_k=16)
    s = al.float() @ bl.float().T
    per = s.view(70, 3, 45).topk(2, dim=2)
    assert rv.shape == ri.shape == r2.shape == (70, 3)
    torch.testing.assert_close(rv, per.values[..., 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(r2, per.values[..., 1], atol=1e-6, rtol=0)
    assert torch.equal(ri, s.view(70, 3, 45).argmax(2)) and bool((ri[:, 1] != 20).all())
    torch.testing.assert_close(cv, s.max(0).values, atol=1e-6, rtol=0)
    assert torch.equal(ci, s.argmax(0))
    with pytest.raises(AssertionError, match="segment"):
        match_max(al, bl, segment=44)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_match_many_with_fused_kernel(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.randn(150, 64, generator=g)
    bs = [torch.randn(90, 64, generator=g) for _ in range(3)]
    bs[1][1] = bs[1][0]
    bs[1][1, 0] += 1e-3  # near ties that the low-precision scores cannot order
    ms = match_many(a, bs, both=True, dtype=dtype, kernel="triton")
    for b, m in zip(bs, ms):
        ref = match(a, b, both=True)
        assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
        torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-6, rtol=0)
        torch.testing.assert_close(m.cos_ba, ref.cos_ba, atol=1e-6, rtol=0)
    assert ms[0].info["rescored_rows"] > 0  # the near ties went through float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_match_with_fused_kernel_returns_float32_argmax(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(150, 64, generator=g), torch.randn(90, 64, generator=g)
    b[1] = b[0]
    b[1, 0] += 1e-3  # near ties that bf16 cannot order
    m = match(a, b, both=True, dtype=dtype, kernel="triton")
    ref = match(a, b, both=True)
    assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
    torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-6, rtol=0)
    assert m.info["kernel"] == "triton" and "fused Triton" in m.backend


def test_fused_kernel_rejects_what_it_cannot_do() -> None:
    a = torch.randn(8, 4)
    with pytest.raises(ValueError, match="k = 1"):
        match(a, a, k=2, dtype=torch.bfloat16, kernel="triton")
    with pytest.raises(ValueError, match="k = 1"):
        match(a, a, absolute=True, dtype=torch.bfloat16, kernel="triton")
    with pytest.raises(ValueError, match="TF32"):
        match(a, a, dtype=torch.float32, kernel="triton")
    with pytest.raises(ValueError, match="kernel must be"):
        match(a, a, kernel="cuda")


def _assert_same_up_to_near_ties(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor) -> None:
    """CPU and GPU float32 sums differ in order: a pick may differ only where the two best cosines tie to ~1e-6
    (float64 scores), and on at most 0.1% of rows."""
    got, want = got.squeeze(1), want.squeeze(1)
    gap = scores.gather(1, want[:, None]) - scores.gather(1, got[:, None])
    assert float(gap.abs().max()) < 1e-5
    assert int((got != want).sum()) <= 0.001 * got.numel()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_kernel_on_gpu(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8192, 768, generator=g), torch.randn(16384, 768, generator=g)
    ref = match(a, b, both=True, device="cpu")
    m = match(a.cuda(), b.cuda(), both=True, dtype=dtype, kernel="triton")
    cos = torch.nn.functional.normalize(a.double(), dim=1) @ torch.nn.functional.normalize(b.double(), dim=1).T
    _assert_same_up_to_near_ties(m.index_ab, ref.index_ab, cos)
    _assert_same_up_to_near_ties(m.index_ba, ref.index_ba, cos.T)
    torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_match_many_on_gpu(kernel: str) -> None:
    """Four dictionaries of 4096 x 768 stacked against 8192 rows: each equals the CPU float32 pair result."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8192, 768, generator=g)
    bs = [torch.randn(4096, 768, generator=g) for _ in range(4)]
    kw = {"dtype": torch.bfloat16} if kernel == "triton" else {}
    ms = match_many(a.cuda(), [b.cuda() for b in bs], both=True, kernel=kernel, **kw)
    an = torch.nn.functional.normalize(a.double(), dim=1)
    for b, m in zip(bs, ms):
        ref = match(a, b, both=True, device="cpu")
        cos = an @ torch.nn.functional.normalize(b.double(), dim=1).T
        _assert_same_up_to_near_ties(m.index_ab, ref.index_ab, cos)
        _assert_same_up_to_near_ties(m.index_ba, ref.index_ba, cos.T)
        torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.cos_ba, ref.cos_ba, atol=1e-5, rtol=0)
