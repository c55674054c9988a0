"""Fused encoder top-k kernel (Triton interpreter on CPU) against sae_fast.reference."""

import pytest
import torch
from sae_fast.kernels.encoder_topk import TileConfig, encoder_topk

from sae_fast import reference
from tests.kernels._tolerances import EXACT, VALUES


def _inputs(n: int, d: int, f: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(f, d, generator=g) / d**0.5
    b = torch.randn(f, generator=g) * 0.1
    return x.to(dtype), W.to(dtype), b.to(dtype)


def _exact_inputs(n: int, d: int, f: int, seed: int, dtype: torch.dtype = torch.float32):
    """Multiples of 1/8 and 1/16 of small integers: exact in bf16 and every fp32 sum of their products exact, so
    no summation order can change a pre-activation (many exact ties, resolved by the lowest index)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 9, (n, d), generator=g) / 8
    W = torch.randint(-4, 5, (f, d), generator=g) / 16
    b = torch.randint(-16, 17, (f,), generator=g) / 16
    return x.to(dtype), W.to(dtype), b.to(dtype)


def assert_topk_matches(values, indices, pre, k, atol=VALUES[torch.float32].atol, rtol=VALUES[torch.float32].rtol):
    """Values equal the reference top-k values; each index points at a pre-activation equal to its value
    (tolerant to near-ties computed in a different summation order); indices unique per row."""
    ref_values, _ = reference.topk_lowest_index(pre, k)
    torch.testing.assert_close(values.float(), ref_values.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(pre.gather(1, indices).float(), values.float(), atol=atol, rtol=rtol)
    if indices.numel():
        assert (indices.sort(1).values.diff(dim=1) > 0).all()


CASES = [  # (N, d, F, k, dead fraction, k_aux, splits)
    (1, 770, 257, 1, 0.3, 5, 1),
    (7, 384, 300, 3, 0.0, None, 2),
    (7, 100, 300, 32, 0.5, 200, 1),  # more aux slots than dead latents
    (130, 100, 200, 32, 0.2, 16, 3),
    (0, 100, 130, 3, 0.5, 4, 1),
]


@pytest.mark.parametrize(
    ("method", "dead_store"), [("tiles", "gemm"), ("tiles", "kernel"), ("running", "kernel"), ("cublas", "auto")]
)
@pytest.mark.parametrize(("n", "d", "f", "k", "dead_frac", "k_aux", "splits"), CASES)
def test_matches_reference(n, d, f, k, dead_frac, k_aux, splits, method, dead_store) -> None:
    """Exact inputs: indices, values, AuxK indices and values equal the reference's bit for bit."""
    x, W, b = _exact_inputs(n, d, f, seed=n + d + f + k)
    dead = None
    if k_aux is not None:
        dead = torch.rand(f, generator=torch.Generator().manual_seed(1)) < dead_frac
    # cublas in chunks of 64 latents, so that tiles and dead latents spread over several chunks
    values, indices, av, ai = encoder_topk(x, W, b, k, dead, k_aux, splits=splits, method=method,
                                           dead_store=dead_store, chunk=64)
    rv, ri, rav, rai = reference.encode_topk(x, W, b, k, dead, k_aux)
    assert values.shape == (n, k) and indices.shape == (n, k) and indices.dtype == torch.int64
    assert torch.equal(indices, ri)
    torch.testing.assert_close(values, rv, **EXACT())
    if dead is None:
        assert av is None and ai is None
        return
    assert av.shape == rav.shape == (n, min(k_aux, int(dead.sum())))
    assert bool(dead[ai].all())
    assert torch.equal(ai, rai)
    torch.testing.assert_close(av, rav, **EXACT())


@pytest.mark.parametrize("method", ["tiles", "cublas"])
@pytest.mark.parametrize("candidates", [1, 2, 32])
def test_tile_guard_recomputes_rows_it_cannot_certify(candidates: int, method: str) -> None:
    """With few candidates per tile many rows cannot be certified; they are recomputed exactly. With a whole
    tile as candidates (M = BLOCK_N = 32 under the interpreter) nothing is unsure."""
    n, d, f, k = 40, 48, 160, 9
    x, W, b = _inputs(n, d, f, seed=5)
    stats: dict = {}
    # cublas in chunks of 64 latents: tiles of 32 spread over three chunks
    values, indices, _, _ = encoder_topk(x, W, b, k, candidates=candidates, stats=stats, method=method, chunk=64)
    ref_values, ref_indices = reference.topk_lowest_index(reference.preactivations(x, W, b), k)
    torch.testing.assert_close(values, ref_values, **VALUES[torch.float32]())
    assert torch.equal(indices, ref_indices)
    assert stats["M"] == max(candidates, 2)  # 5 tiles of 32: at least ceil(9 / 5) = 2 candidates each
    if candidates == 1 or candidates == 2:
        assert stats["unsure_rows"] > 0
    else:
        assert stats["unsure_rows"] == 0


@pytest.mark.parametrize("method", ["tiles", "cublas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_with_fewer_than_k_positive_values_need_no_recomputation(method: str, dtype: torch.dtype) -> None:
    """Latents 5, 40, 100, 170 and 250 can fire (one per 32-wide tile), the rest cannot: every row has at most 5
    positive values for k = 9, so its top-k ends in ReLU zeros, which tie in every tile. The guard alone would
    send every row to the exact kernel; the positives are exact and the zeros go to the lowest free indices."""
    n, d, f, k = 33, 24, 300, 9
    x, W, _ = _inputs(n, d, f, seed=7, dtype=dtype)
    b = torch.full((f,), -30.0)
    b[[5, 40, 100, 170, 250]] = 0.3
    b = b.to(dtype)
    x[3] = 0  # a row whose only positives are the biases
    stats: dict = {}
    values, indices, _, _ = encoder_topk(x, W, b, k, candidates=2, stats=stats, method=method, chunk=64)
    pre = reference.preactivations(x.float(), W.float(), b.float())  # the kernel accumulates in fp32
    ref_values, ref_indices = reference.topk_lowest_index(pre, k)
    assert int((pre > 0).sum(1).max()) <= 5 and int((pre > 0).sum(1).min()) >= 1
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values, ref_values, **VALUES[torch.float32]())
    assert stats["unsure_rows"] == 0 and stats["zero_tail_rows"] == n
    assert indices[3].tolist() == [5, 40, 100, 170, 250, 0, 1, 2, 3]
    # one row with a tile holding more positives than candidates kept: the guard sends it to the exact kernel
    b[[6, 7]] = 40.0
    values, indices, _, _ = encoder_topk(x, W, b, k, candidates=2, stats=stats, method=method, chunk=64)
    pre = reference.preactivations(x.float(), W.float(), b.float())
    assert torch.equal(indices, reference.topk_lowest_index(pre, k)[1])
    assert stats["unsure_rows"] == n and stats["zero_tail_rows"] == 0


def test_candidates_per_tile_grows_with_expected_winners_per_tile() -> None:
    from sae_fast.kernels.encoder_topk import _candidates_per_tile

    wide, mid, narrow = (_candidates_per_tile(64, f, 128) for f in (2**20, 2**17, 2**14))
    assert 2 <= wide <= mid < narrow <= 128
    assert _candidates_per_tile(64, 100, 128) == 100  # one tile of 100 latents: all of them
    assert _candidates_per_tile(5, 1000, 4) >= 1


def test_ties_lowest_index_wins_exactly() -> None:
    # x = 0 makes every pre-activation exactly relu(b): many exact ties, including at zero
    f, d, k = 150, 20, 8
    b = torch.tensor([0.5, -1.0, 0.25] * 50)
    x = torch.zeros(5, d)
    W = torch.randn(f, d)
    dead = torch.arange(f) % 7 == 0
    for splits in (1, 2):
        values, indices, av, ai = encoder_topk(x, W, b, k, dead, 30, splits=splits)
        rv, ri, rav, rai = reference.encode_topk(x, W, b, k, dead, 30)
        assert torch.equal(indices, ri) and torch.equal(values, rv)
        assert indices[0].tolist() == [0, 3, 6, 9, 12, 15, 18, 21]
        assert torch.equal(ai, rai) and torch.equal(av, rav)
    # all pre-activations negative: relu gives zeros, the lowest k indices win
    values, indices, _, _ = encoder_topk(x, W, -b.abs() - 1, k)
    assert indices[0].tolist() == list(range(k)) and values.abs().max() == 0


@pytest.mark.parametrize("method", ["tiles", "cublas", "running"])
@pytest.mark.parametrize("columns", [1, 3, 40])
def test_dead_buffer_cap_scans_dead_latents_in_blocks(method: str, columns: int) -> None:
    """Over the AuxK buffer cap the dead latents are scanned in blocks of `columns` with a running merge: the
    same AuxK values and indices (ties included) as one selection, for blocks smaller than k_aux too."""
    n, d, f, k, k_aux = 9, 100, 200, 3, 7
    x, W, b = _exact_inputs(n, d, f, seed=11)
    dead = torch.rand(f, generator=torch.Generator().manual_seed(2)) < 0.4
    values, indices, av, ai = encoder_topk(x, W, b, k, dead, k_aux, method=method, chunk=64,
                                           dead_buffer_bytes=4 * n * columns)
    rv, ri, rav, rai = reference.encode_topk(x, W, b, k, dead, k_aux)
    assert torch.equal(indices, ri) and torch.equal(values, rv)
    assert torch.equal(ai, rai) and torch.equal(av, rav)
    with pytest.raises(ValueError, match="dead_buffer_bytes"):
        encoder_topk(x, W, b, k, dead, k_aux, dead_buffer_bytes=4 * n - 1)


def test_no_dead_latents_gives_empty_aux() -> None:
    x, W, b = _inputs(4, 100, 130, seed=0)
    _, _, av, ai = encoder_topk(x, W, b, 3, torch.zeros(130, dtype=torch.bool), 10)
    assert av.shape == (4, 0) and ai.shape == (4, 0)


def test_bf16_close_to_fp32_reference() -> None:
    x, W, b = _inputs(7, 100, 200, seed=5, dtype=torch.bfloat16)
    values, indices, _, _ = encoder_topk(x, W, b, 3)
    pre = reference.preactivations(x, W, b)  # in fp32, as the kernel accumulates
    assert_topk_matches(values, indices, pre, 3, **VALUES[torch.bfloat16]())


def test_bad_inputs() -> None:
    x, W, b = _inputs(4, 100, 130, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        encoder_topk(x, W, b, 131)
    with pytest.raises(ValueError, match="contiguous"):
        encoder_topk(x.t().contiguous().t(), W, b, 3)
    with pytest.raises(TypeError, match="W_enc"):
        encoder_topk(x, W.double(), b, 3)
    with pytest.raises(ValueError, match="dead_mask"):
        encoder_topk(x, W, b, 3, torch.zeros(129, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="k_aux"):
        encoder_topk(x, W, b, 3, torch.zeros(130, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="dead_store"):
        encoder_topk(x, W, b, 3, torch.zeros(130, dtype=torch.bool), 4, dead_store="cublas")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "cfg", [TileConfig(64, 128, 64, 8, 3), TileConfig(128, 128, 32, 8, 3)], ids=["64x128x64", "128x128x32"]
)
def test_gpu_tile_configs_under_the_interpreter(cfg, dtype) -> None:
    """The GPU's 128-latent tiles (the interpreter's default is 32) on F = 300 (a partial last tile), with AuxK
    stored by the kernel: exact inputs, so everything compares bit for bit; bf16 selects on fp32 like the
    reference."""
    n, d, f, k = 70, 100, 300, 9
    x, W, b = _exact_inputs(n, d, f, seed=3, dtype=dtype)
    dead = torch.arange(f) % 3 == 0
    stats: dict = {}
    values, indices, av, ai = encoder_topk(x, W, b, k, dead, 12, tile_config=cfg, dead_store="kernel", stats=stats)
    _, ri, _, rai = reference.encode_topk(x, W, b, k, dead, 12)
    assert torch.equal(indices, ri) and torch.equal(ai, rai)
    pre = reference.preactivations(x, W, b)  # fp32: the kernel returns fp32 values (ops casts them to x's dtype)
    assert torch.equal(values, pre.gather(1, ri)) and torch.equal(av, pre.gather(1, rai))
    assert stats["M"] < 128  # not every value a candidate: the guard is exercised
