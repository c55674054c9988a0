"""sae_fast.ops: dispatch, input checks, and the Triton autograd path (interpreter) against the reference."""

import pytest
import torch

from sae_fast import ops


def _params(n: int, d: int, f: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(f, d, generator=g) / d**0.5).to(dtype).requires_grad_()
    b = (torch.randn(f, generator=g) * 0.1).to(dtype).requires_grad_()
    W_dec = torch.randn(f, d, generator=g).to(dtype).requires_grad_()
    return x, W, b, W_dec


def _run(backend: str, x, W, b, W_dec, k, dead, k_aux, fused: bool = False):
    for t in (x, W, b, W_dec):
        t.grad = None
    with ops.backend(backend):
        enc = ops.encode(x, W, b, k, dead_mask=dead, k_aux=k_aux)
        if enc.aux_values is None:
            out = ops.decode(enc.values, enc.indices, W_dec)
            loss = out.pow(2).sum()
        elif fused:
            out, aux = ops.decode_with_aux(enc.values, enc.indices, enc.aux_values, enc.aux_indices, W_dec, dead)
            loss = out.pow(2).sum() + 0.7 * aux.pow(2).sum()
        else:
            out = ops.decode(enc.values, enc.indices, W_dec)
            loss = out.pow(2).sum() + 0.7 * ops.decode_aux(enc.aux_values, enc.aux_indices, W_dec, dead).pow(2).sum()
        loss.backward()
    return enc, out, [t.grad.clone() for t in (x, W, b, W_dec)]


@pytest.mark.parametrize("fused", [False, True], ids=["decode+decode_aux", "decode_with_aux"])
@pytest.mark.parametrize("aux", ["dense", "sparse"])
@pytest.mark.parametrize(("n", "d", "f", "k", "k_aux"), [(7, 100, 150, 3, 10), (33, 384, 130, 32, None)])
def test_triton_path_matches_reference_with_gradients(n, d, f, k, k_aux, aux, fused, monkeypatch) -> None:
    """AuxK gradients both ways: dense GEMMs over the dead latents, or the sparse kernels (ratio 0); decoded
    separately or by the one op whose backward builds a single W_dec gradient."""
    if fused and k_aux is None:
        pytest.skip("decode_with_aux needs AuxK")
    monkeypatch.setattr(ops, "AUX_DENSE_MAX_RATIO", 256 if aux == "dense" else 0)
    assert ops.aux_is_dense(10, 38, 7) == (aux == "dense")
    assert not ops.aux_is_dense(10, 38, ops.AUX_DENSE_MAX_ELEMENTS)  # too many rows x dead latents: sparse
    x, W, b, W_dec = _params(n, d, f, seed=n)
    dead = (torch.arange(f) % 4 == 1) if k_aux else None
    enc_r, out_r, grads_r = _run("reference", x, W, b, W_dec, k, dead, k_aux, fused)
    enc_t, out_t, grads_t = _run("triton", x, W, b, W_dec, k, dead, k_aux, fused)
    assert torch.equal(enc_t.indices, enc_r.indices)
    torch.testing.assert_close(enc_t.values, enc_r.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_t, out_r, atol=1e-4, rtol=1e-5)
    if dead is not None:
        assert torch.equal(enc_t.aux_indices, enc_r.aux_indices)
    for name, gt, gr in zip(("x", "W_enc", "b_enc", "W_dec"), grads_t, grads_r):
        # fp32 sums in another order: absolute tolerance relative to the gradient's scale
        atol = 1e-5 * float(gr.abs().max())
        torch.testing.assert_close(gt, gr, atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_empty_batch() -> None:
    x, W, b, W_dec = _params(0, 100, 130, seed=0)
    with ops.backend("triton"):
        enc = ops.encode(x, W, b, 3, dead_mask=torch.ones(130, dtype=torch.bool), k_aux=4)
        out = ops.decode(enc.values, enc.indices, W_dec)
        out.sum().backward()
    assert enc.values.shape == (0, 3) and enc.aux_values.shape == (0, 4) and out.shape == (0, 100)
    assert W.grad.abs().sum() == 0 and W_dec.grad.abs().sum() == 0


def test_backend_switch_and_float64_fallback() -> None:
    assert ops.get_backend() == "auto"
    with ops.backend("reference"):
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("cuda")
    x, W, b, _ = _params(3, 8, 10, seed=0, dtype=torch.float64)
    with ops.backend("triton"):  # the kernels take fp32/bf16/fp16: float64 goes to the reference
        assert ops.encode(x, W, b, 2).values.dtype == torch.float64


def test_bad_inputs_name_the_argument() -> None:
    x, W, b, W_dec = _params(4, 10, 20, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(rows, 10\)"):
        ops.encode(x[:, :9], W, b, 3)
    with pytest.raises(ValueError, match="b_enc"):
        ops.encode(x, W, b[:5], 3)
    with pytest.raises(TypeError, match="share a dtype"):
        ops.encode(x, W.double(), b, 3)
    with pytest.raises(ValueError, match="k must be"):
        ops.encode(x, W, b, 0)
    with pytest.raises(ValueError, match="dead_mask"):
        ops.encode(x, W, b, 3, dead_mask=torch.zeros(20))
    with pytest.raises(ValueError, match="k_aux"):
        ops.encode(x, W, b, 3, dead_mask=torch.zeros(20, dtype=torch.bool), k_aux=0)
    with pytest.raises(ValueError, match="NaN"):
        ops.encode(torch.full((2, 10), float("inf")), W, b, 3)
    with pytest.raises(TypeError, match="indices"):
        ops.decode(torch.ones(4, 3), torch.ones(4, 3), W_dec)
    with pytest.raises(ValueError, match="indices must have the shape"):
        ops.decode(torch.ones(4, 3), torch.zeros(4, 2, dtype=torch.long), W_dec)
    with pytest.raises(TypeError, match="W_dec"):
        ops.decode(torch.ones(4, 3), torch.zeros(4, 3, dtype=torch.long), torch.zeros(20, 10, dtype=torch.long))


def test_decode_many_one_backward_matches_separate_decodes() -> None:
    g = torch.Generator().manual_seed(9)
    W = torch.randn(130, 100, generator=g, requires_grad=True)
    v1 = torch.randn(7, 3, generator=g, requires_grad=True)
    v2 = torch.randn(7, 11, generator=g, requires_grad=True)
    i1 = torch.randint(0, 130, (7, 3), generator=g)
    i2 = torch.randint(0, 130, (7, 11), generator=g)
    w1, w2 = torch.randn(7, 100, generator=g), torch.randn(7, 100, generator=g)
    results = {}
    for backend in ("reference", "triton"):
        for t in (W, v1, v2):
            t.grad = None
        with ops.backend(backend):
            a, b = ops.decode_many([(v1, i1), (v2, i2)], W)
            ((a * w1).sum() + (b * w2).sum()).backward()
        results[backend] = [a.detach(), b.detach(), W.grad.clone(), v1.grad.clone(), v2.grad.clone()]
    for got, want in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="pairs"):
        ops.decode_many([], W)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("n", "k"), [(130, 7), (1, 1), (0, 3), (5, 0)])
def test_cpu_decode_path_equals_the_reference(dtype: torch.dtype, n: int, k: int) -> None:
    """The torch path's decode (embedding_bag for fp32/fp64, the reference otherwise) against the reference:
    output and both gradients, repeated latents in a row, empty batches and k = 0."""
    g = torch.Generator().manual_seed(n + k)
    f, d = 50, 33
    W = torch.randn(f, d, generator=g).to(dtype)
    values = torch.rand(n, k, generator=g).to(dtype)
    indices = torch.randint(0, f, (n, k), generator=g)
    if n and k > 1:
        indices[0, 1] = indices[0, 0]  # the same latent twice in one row
    grad = torch.randn(n, d, generator=g).to(dtype)
    results = []
    for name in ("auto", "reference"):
        Wg, vg = W.clone().requires_grad_(True), values.clone().requires_grad_(True)
        with ops.backend(name):
            out = ops.decode(vg, indices, Wg)
        out.backward(grad)
        results.append((out, Wg.grad, vg.grad))
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 0.0}[dtype]
    for got, want in zip(*results):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
