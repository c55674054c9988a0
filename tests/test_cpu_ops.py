"""sae_fast.cpu_ops: the sparse CPU encoder/decoder against the dense reference on odd shapes (values, indices,
AuxK, gradients in fp32 and bf16), chunked selection, determinism, and memory without an (N, F) array."""

import pytest
import torch

from sae_fast import cpu_ops, ops, reference


def _inputs(dtype: torch.dtype, n: int, d: int, f: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[::4] *= 0.01  # rows with fewer than k positive pre-activations: ReLU-zero ties
    W = torch.randn(f, d, generator=g) / d**0.5
    b = torch.randn(f, generator=g) * 0.2 - 0.5
    W[4], b[4] = W[2], b[2]  # identical latents: exact ties in every row
    Wd = torch.randn(f, d, generator=g)
    return x.to(dtype), W.to(dtype), b.to(dtype), Wd.to(dtype)


def _step(backend: str, x, W, b, Wd, k: int, dead, k_aux: int):
    """Values, indices, AuxK and the gradients of a loss through encode and decode(_with_aux)."""
    params = [t.clone().requires_grad_(True) for t in (x, W, b, Wd)]
    with ops.backend(backend):
        enc = ops.encode(*params[:3], k, dead_mask=dead, k_aux=k_aux)
        out = ops.decode(enc.values, enc.indices, params[3])
        loss = (out.float() * torch.linspace(-1, 1, out.shape[1])).sum()
        if dead is not None:
            aux = ops.decode_aux(enc.aux_values, enc.aux_indices, params[3], dead)
            loss = loss + aux.float().pow(2).sum()
        loss.backward()
    return enc, [p.grad for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dead_frac", [None, 0.3, 1.0])
@pytest.mark.parametrize(("n", "d", "f", "k"), [(37, 19, 131, 5), (3, 7, 9, 9), (65, 33, 300, 17)])
def test_matches_the_reference_with_gradients(dtype, dead_frac, n, d, f, k) -> None:
    x, W, b, Wd = _inputs(dtype, n, d, f)
    dead = None if dead_frac is None else torch.rand(f, generator=torch.Generator().manual_seed(1)) < dead_frac
    if dead is not None and not bool(dead.any()):
        dead[0] = True
    fast, fast_grads = _step("auto", x, W, b, Wd, k, dead, k_aux=6)
    ref, ref_grads = _step("reference", x, W, b, Wd, k, dead, k_aux=6)
    assert torch.equal(fast.indices, ref.indices) and torch.equal(fast.values, ref.values)
    if dead is not None:
        assert torch.equal(fast.aux_indices, ref.aux_indices) and torch.equal(fast.aux_values, ref.aux_values)
    assert bool((ref.values == 0).any())  # the ReLU-zero ties are exercised
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for name, a, r in zip(("x", "W_enc", "b_enc", "W_dec"), fast_grads, ref_grads):
        scale = float(r.float().abs().max()) or 1.0
        torch.testing.assert_close(a.float() / scale, r.float() / scale, **tol, msg=f"grad of {name}")


def test_chunked_selection_is_the_same(monkeypatch) -> None:
    """Many chunks of rows (down to one row each) select what a single chunk selects."""
    x, W, b, _ = _inputs(torch.float32, 41, 12, 57, seed=5)
    dead = torch.arange(57) % 4 == 0
    whole = cpu_ops.encode_topk(x, W, b, 6, dead, 5)
    for elements in (57 * 7, 1):
        monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", elements)
        chunked = cpu_ops.encode_topk(x, W, b, 6, dead, 5)
        for a, c in zip(whole, chunked):
            torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
        assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[3], chunked[3])


def test_bit_identical_between_runs() -> None:
    x, W, b, Wd = _inputs(torch.float32, 50, 24, 200, seed=2)
    dead = torch.arange(200) % 5 == 0
    first, first_grads = _step("auto", x, W, b, Wd, 8, dead, k_aux=12)
    second, second_grads = _step("auto", x, W, b, Wd, 8, dead, k_aux=12)
    assert all(torch.equal(a, c) for a, c in zip(first, second))
    assert all(torch.equal(a, c) for a, c in zip(first_grads, second_grads))


def _largest_allocation(fn) -> int:
    """The largest CPU allocation (bytes) any op made while fn ran (torch.profiler's memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events())


def test_no_dense_batch_by_latents_array(monkeypatch) -> None:
    """Forward and backward allocate at most the (rows, F) chunk buffer, never (N, F); the reference does (so
    the measurement sees such arrays), and the chunk buffer grows with CHUNK_ELEMENTS as stated."""
    n, d, f, k = 512, 16, 2048, 4
    x, W, b, Wd = _inputs(torch.float32, n, d, f, seed=3)
    dense_bytes = n * f * 4
    monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", 2**14)

    def run(backend: str):
        return lambda: _step(backend, x, W, b, Wd, k, None, k_aux=4)

    assert _largest_allocation(run("reference")) >= dense_bytes
    assert _largest_allocation(run("auto")) <= dense_bytes // 16  # chunk 64 KiB, (F, d) gradients 128 KiB
    monkeypatch.setattr(cpu_ops, "CHUNK_ELEMENTS", 2**18)
    assert _largest_allocation(run("auto")) >= 2**18 * 4


def test_reference_backend_is_untouched() -> None:
    """The "reference" backend keeps the dense oracle (its values are what the tests above compare against)."""
    x, W, b, _ = _inputs(torch.float32, 9, 5, 20)
    with ops.backend("reference"):
        out = ops.encode(x, W, b, 3)
    ref = reference.encode_topk(x, W, b, 3)
    assert torch.equal(out.values, ref[0]) and torch.equal(out.indices, ref[1])
