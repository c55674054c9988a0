"""sae_fast.ops: dispatch, input checks, and the Triton autograd path (interpreter) against the reference."""

import pytest
import torch

from sae_fast import ops
from tests.kernels._tolerances import EXACT, GRADCHECK, GRADS, SUMS, VALUES


def _params(n: int, d: int, f: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(f, d, generator=g) / d**0.5).to(dtype).requires_grad_()
    b = (torch.randn(f, generator=g) * 0.1).to(dtype).requires_grad_()
    W_dec = torch.randn(f, d, generator=g).to(dtype).requires_grad_()
    return x, W, b, W_dec


def _exact_params(n: int, d: int, f: int, seed: int, dtype: torch.dtype):
    """Encoder inputs that are small multiples of 1/8 and 1/16 (exact in bf16, every fp32 sum of their products
    exact): the kernels' summation order cannot change a pre-activation, so indices compare exactly (ties
    included; there are many). W_dec is random."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-8, 9, (n, d), generator=g) / 8).to(dtype).requires_grad_()
    W = (torch.randint(-4, 5, (f, d), generator=g) / 16).to(dtype).requires_grad_()
    b = (torch.randint(-16, 17, (f,), generator=g) / 16).to(dtype).requires_grad_()
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
@pytest.mark.parametrize(("n", "d", "f", "k", "k_aux"), [(7, 100, 150, 3, 10)])
def test_triton_path_matches_reference_with_gradients(n, d, f, k, k_aux, aux, fused, monkeypatch) -> None:
    """Random (not exact) fp32 inputs. AuxK gradients both ways: dense GEMMs over the dead latents, or the sparse
    kernels (ratio 0); decoded separately or by the one op whose backward builds a single W_dec gradient. More
    shapes and bf16: `test_covering_shapes_exact_inputs`."""
    monkeypatch.setattr(ops, "AUX_DENSE_MAX_RATIO", 256 if aux == "dense" else 0)
    assert ops.aux_is_dense(10, 38, 7) == (aux == "dense")
    assert not ops.aux_is_dense(10, 38, ops.AUX_DENSE_MAX_ELEMENTS)  # too many rows x dead latents: sparse
    x, W, b, W_dec = _params(n, d, f, seed=n)
    dead = (torch.arange(f) % 4 == 1) if k_aux else None
    enc_r, out_r, grads_r = _run("reference", x, W, b, W_dec, k, dead, k_aux, fused)
    enc_t, out_t, grads_t = _run("triton", x, W, b, W_dec, k, dead, k_aux, fused)
    _assert_paths_agree(enc_t, out_t, grads_t, enc_r, out_r, grads_r, torch.float32, exact=False)


def _assert_paths_agree(enc_t, out_t, grads_t, enc_r, out_r, grads_r, dtype: torch.dtype, exact: bool) -> None:
    """Kernel path against reference: indices (and AuxK indices) equal; values equal for exact inputs, else within
    VALUES; decoded output within SUMS; gradients within GRADS (atol relative to the gradient's scale)."""
    assert torch.equal(enc_t.indices, enc_r.indices)
    torch.testing.assert_close(enc_t.values, enc_r.values, **(EXACT if exact else VALUES[dtype])())
    torch.testing.assert_close(out_t, out_r, **SUMS[dtype]())
    if enc_r.aux_indices is not None:
        assert torch.equal(enc_t.aux_indices, enc_r.aux_indices)
        torch.testing.assert_close(enc_t.aux_values, enc_r.aux_values, **(EXACT if exact else VALUES[dtype])())
    for name, gt, gr in zip(("x", "W_enc", "b_enc", "W_dec"), grads_t, grads_r):
        assert gt.dtype == gr.dtype == dtype
        tol = GRADS[dtype](float(gr.abs().max()))
        torch.testing.assert_close(gt, gr, **tol, msg=lambda m, name=name: f"{name}: {m}")


# A covering subset of d_in {100, 384, 770} x k {1, 3, 32} x N {1, 7, 130} (each value at least twice; kept to
# seven: the interpreter pays per program, ~20 s in all), F = 161 (not a multiple of any tile), AuxK always on,
# fp32 and bf16, AuxK dense and sparse, decoded separately and by decode_with_aux.
COVERING = [  # (n, d, k, dtype, aux, fused)
    (1, 770, 32, torch.float32, "sparse", True),
    (1, 100, 1, torch.bfloat16, "dense", False),
    (7, 384, 3, torch.bfloat16, "sparse", False),
    (7, 770, 1, torch.float32, "dense", True),
    (7, 100, 32, torch.float32, "sparse", False),
    (130, 100, 3, torch.float32, "dense", False),
    (130, 384, 32, torch.bfloat16, "dense", True),
]


@pytest.mark.parametrize(("n", "d", "k", "dtype", "aux", "fused"), COVERING)
def test_covering_shapes_exact_inputs(n, d, k, dtype, aux, fused, monkeypatch, one_torch_thread) -> None:
    """Kernel path (interpreter) against the reference on exact inputs: indices, values and AuxK bit for bit in
    fp32 and bf16 (both select on fp32 pre-activations; a reference that rounded them to bf16 first made ties
    the kernels do not see), outputs and all gradients within the documented tolerances."""
    f = 161
    monkeypatch.setattr(ops, "AUX_DENSE_MAX_RATIO", 256 if aux == "dense" else 0)
    x, W, b, W_dec = _exact_params(n, d, f, seed=n + d + k, dtype=dtype)
    dead = torch.arange(f) % 4 == 1  # 40 dead latents
    enc_r, out_r, grads_r = _run("reference", x, W, b, W_dec, k, dead, 16, fused)
    enc_t, out_t, grads_t = _run("triton", x, W, b, W_dec, k, dead, 16, fused)
    assert enc_t.values.dtype == enc_r.values.dtype == dtype
    _assert_paths_agree(enc_t, out_t, grads_t, enc_r, out_r, grads_r, dtype, exact=True)


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


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_decode_rejects_out_of_range_indices(backend: str) -> None:
    """An index F or -1 would be read out of bounds by the kernels (and dropped by the CSR layout's bincount):
    every decode entry point names the argument; check_indices=False skips the check (and its host sync)."""
    W_dec = _params(4, 10, 20, seed=0)[3]
    values = torch.rand(4, 3)
    dead = torch.arange(20) >= 10
    good = torch.tensor([[10, 11, 12]] * 4)
    with ops.backend(backend):
        for bad in (20, -1):
            indices = good.clone()
            indices[2, 1] = bad
            with pytest.raises(ValueError, match=r"indices must lie in \[0, num_latents=20\)"):
                ops.decode(values, indices, W_dec)
            with pytest.raises(ValueError, match=r"indices must lie in \[0, num_latents=20\)"):
                ops.decode_many([(values, good), (values, indices.int())], W_dec)
            with pytest.raises(ValueError, match=r"indices must lie"):
                ops.decode_aux(values, indices, W_dec, dead)
            with pytest.raises(ValueError, match=r"^aux_indices must lie"):
                ops.decode_with_aux(values, good, values, indices, W_dec, dead)
            with pytest.raises(ValueError, match=r"^indices must lie"):
                ops.decode_with_aux(values, indices, values, good, W_dec, dead)
        out = ops.decode(values, good, W_dec, check_indices=False)
    torch.testing.assert_close(out, ops.decode(values, good, W_dec), **SUMS[torch.float32]())
    with pytest.raises(ValueError, match="indices must have the shape"):
        ops.decode(values, good[:, :2], W_dec)
    with pytest.raises(TypeError, match="indices must be an int64"):
        ops.decode(values, good.float(), W_dec)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's matmul, on purpose
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_check_finite_names_the_argument(backend: str) -> None:
    """x and b_enc are scanned (cheap); W_enc is named when a selected value comes out non-finite; the values
    given to decode are scanned; finite inputs whose pre-activations overflow are reported as such."""
    x, W, b, W_dec = (t.detach() for t in _params(6, 10, 20, seed=1))
    dead = torch.arange(20) % 2 == 0
    with ops.backend(backend):
        for name, args in (
            ("x", (x.clone().index_fill_(0, torch.tensor([2]), float("nan")), W, b)),
            ("b_enc", (x, W, b.clone().index_fill_(0, torch.tensor([3]), float("inf")))),
            ("W_enc", (x, W.clone().index_fill_(0, torch.tensor([4]), float("nan")), b)),
        ):
            with pytest.raises(ValueError, match=f"^{name} contains NaN or inf"):
                ops.encode(*args, 3, dead_mask=dead, k_aux=4)
        ops.encode(x, W, b.clone().index_fill_(0, torch.tensor([3]), float("inf")), 3, check_finite=False)
        with pytest.raises(ValueError, match="overflowed"):
            ops.encode(torch.full((2, 10), 1e30), torch.full((20, 10), 1e10), b, 3)
        values, indices = torch.rand(6, 3), torch.randint(0, 20, (6, 3))
        bad = values.clone().index_fill_(1, torch.tensor([1]), float("nan"))
        with pytest.raises(ValueError, match=r"^values contains NaN"):
            ops.decode(bad, indices, W_dec)
        aux_indices = torch.zeros(6, 3, dtype=torch.long)
        with pytest.raises(ValueError, match=r"^aux_values contains NaN"):
            ops.decode_with_aux(values, indices, bad, aux_indices, W_dec, dead)
        assert ops.decode(bad, indices, W_dec, check_finite=False).isnan().any()


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_aux_decode_validates_the_dead_mask(backend: str) -> None:
    """decode_aux / decode_with_aux: a missing, wrong-length or non-bool dead_mask and AuxK indices of live latents
    (which the dense path would decode from the wrong rows) raise ValueError."""
    _, _, _, W_dec = (t.detach() for t in _params(5, 10, 20, seed=2))
    dead = torch.arange(20) >= 12
    values = torch.rand(5, 2)
    aux = torch.tensor([[12, 19]] * 5)
    with ops.backend(backend):
        for mask, match in (
            (None, "dead_mask must be a bool tensor of shape \\(20,\\), got NoneType"),
            (dead[:19], "dead_mask must be a bool tensor of shape \\(20,\\)"),
            (dead.float(), "dead_mask must be a bool tensor"),
        ):
            with pytest.raises(ValueError, match=match):
                ops.decode_aux(values, aux, W_dec, mask)
            with pytest.raises(ValueError, match=match):
                ops.decode_with_aux(values, aux, values, aux, W_dec, mask)
        live = aux.clone()
        live[3, 0] = 11
        with pytest.raises(ValueError, match="aux_indices must all be dead latents"):
            ops.decode_aux(values, live, W_dec, dead)
        with pytest.raises(ValueError, match="aux_indices must all be dead latents"):
            ops.decode_with_aux(values, aux, values, live, W_dec, dead)


def test_k_must_be_a_real_int() -> None:
    x, W, b, _ = _params(4, 10, 20, seed=0)
    with pytest.raises(ValueError, match="k must be an int"):
        ops.encode(x, W, b, True)
    with pytest.raises(ValueError, match="k must be an int"):
        ops.encode(x, W, b, 2.0)
    with pytest.raises(ValueError, match="k_aux must be an int"):
        ops.encode(x, W, b, 2, dead_mask=torch.ones(20, dtype=torch.bool), k_aux=True)
    out = ops.encode(x[:, :1], W[:, :1], b, 2, dead_mask=torch.ones(20, dtype=torch.bool))  # d = 1: k_aux = 1
    assert out.aux_values.shape == (4, 1)


def test_gradcheck_float64_cpu_path() -> None:
    """The torch path of ops (sort-free top-k, embedding_bag decode, AuxK as a GEMM over the dead latents) in
    float64 against finite differences."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    Wd = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    dead = torch.arange(11) % 3 == 0
    assert ops.get_backend() == "auto" and ops.aux_is_dense(2, int(dead.sum()), 5)

    def f(x, W, b, Wd):
        enc = ops.encode(x, W, b, 3, dead_mask=dead, k_aux=2)
        out, aux = ops.decode(enc.values, enc.indices, Wd), ops.decode_aux(enc.aux_values, enc.aux_indices, Wd, dead)
        return out, aux

    assert torch.autograd.gradcheck(f, (x, W, b, Wd), **GRADCHECK)
