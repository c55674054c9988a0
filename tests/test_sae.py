"""TopKSAE on the reference path: API, init, losses, AuxK gradients, decoder-norm upkeep."""

import pytest
import torch

from sae_fast import ForwardOutput, TopKSAE
from sae_fast.sae import geometric_median


def _data(n: int = 32, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_init_is_tied_unit_norm_and_seeded() -> None:
    a, b = TopKSAE(12, 40, 4, seed=3), TopKSAE(12, 40, 4, seed=3)
    torch.testing.assert_close(a.W_enc, b.W_enc)
    assert not torch.equal(a.W_enc, TopKSAE(12, 40, 4, seed=4).W_enc)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(a.W_dec, a.W_enc / a.W_enc.norm(dim=1, keepdim=True))
    assert (a.d_in, a.num_latents, a.k) == (12, 40, 4)
    assert a.W_enc.shape == (40, 12) and a.b_enc.shape == (40,) and a.b_dec.shape == (12,)


def test_forward_matches_definition() -> None:
    sae = TopKSAE(12, 40, 4, seed=0)
    x = _data()
    sae.init_b_dec_from_data(x, method="mean")
    out = sae(x)
    assert isinstance(out, ForwardOutput)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    top = torch.topk(pre, 4)
    dense = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    recon = dense @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(out.recon, recon)
    fvu = (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu, fvu)
    assert out.auxk_loss.item() == 0.0
    v, i = sae.encode(x)
    torch.testing.assert_close(sae.decode(v, i), recon)


def test_auxk_loss_definition_and_encoder_gradient() -> None:
    sae = TopKSAE(12, 40, 4, seed=1)
    x = _data(seed=1)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:10] = True
    out = sae(x, dead_mask=dead, k_aux=6)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    aux = torch.topk(pre[:, :10], 6)
    aux_recon = torch.zeros(32, 10).scatter(1, aux.indices, aux.values) @ sae.W_dec[:10]  # no b_dec
    expected = min(10 / 6, 1.0) * (aux_recon - (x - out.recon).detach()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.auxk_loss, expected)
    out.auxk_loss.backward()
    assert sae.W_enc.grad[:10].abs().sum() > 0 and sae.b_enc.grad[:10].abs().sum() > 0
    assert sae.W_enc.grad[10:].abs().sum() == 0  # only dead latents get AuxK gradient


def test_auxk_scale_and_no_dead() -> None:
    sae = TopKSAE(12, 40, 4, seed=2)
    x = _data(seed=2)
    assert sae(x, dead_mask=torch.zeros(40, dtype=torch.bool)).auxk_loss.item() == 0.0
    dead = torch.zeros(40, dtype=torch.bool)
    dead[5] = True
    out = sae(x, dead_mask=dead)  # k_aux defaults to d_in // 2 = 6: scale 1/6
    assert out.auxk_loss.item() > 0


def test_decoder_norm_upkeep() -> None:
    sae = TopKSAE(12, 40, 4, seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    sae(_data()).fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6


def test_geometric_median_is_robust() -> None:
    pts = torch.cat([torch.zeros(9, 2), torch.tensor([[1000.0, 1000.0]])])
    assert geometric_median(pts).norm() < 1e-2
    sae = TopKSAE(2, 4, 1, seed=0)
    sae.init_b_dec_from_data(pts)
    assert sae.b_dec.norm() < 1e-2
    with pytest.raises(ValueError, match="method"):
        sae.init_b_dec_from_data(pts, method="median")


def test_empty_batch_and_bad_input() -> None:
    sae = TopKSAE(12, 40, 4, seed=0)
    out = sae(torch.zeros(0, 12))
    assert out.recon.shape == (0, 12) and out.values.shape == (0, 4) and out.fvu.item() == 0.0
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        sae(torch.zeros(3, 11))
    with pytest.raises(ValueError, match="NaN"):
        sae(torch.full((3, 12), float("nan")))
    with pytest.raises(ValueError, match="dead_mask"):
        sae(_data(), dead_mask=torch.zeros(39, dtype=torch.bool))
    with pytest.raises(ValueError, match="k="):
        TopKSAE(12, 4, 5)


@pytest.mark.parametrize("aux_dense_ratio", [256, 0], ids=["aux-dense", "aux-sparse"])
def test_triton_backend_training_steps_match_reference(aux_dense_ratio: int, monkeypatch) -> None:
    """Three Adam steps with FVU + AuxK: the kernel path (interpreter) tracks the reference path, with AuxK as
    GEMMs over the dead latents or through the sparse kernels."""
    from sae_fast import ops

    monkeypatch.setattr(ops, "AUX_DENSE_MAX_RATIO", aux_dense_ratio)
    x = _data(n=24, d=20, seed=5)
    dead = torch.arange(64) % 5 == 0
    losses, params = {}, {}
    for backend in ("reference", "triton"):
        sae = TopKSAE(20, 64, 4, seed=11)
        sae.init_b_dec_from_data(x, method="mean")
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        losses[backend] = []
        with ops.backend(backend):
            for _ in range(3):
                sae.set_decoder_norm_to_unit_norm()
                out = sae(x, dead_mask=dead, k_aux=8)
                loss = out.fvu + out.auxk_loss / 32
                opt.zero_grad()
                loss.backward()
                sae.remove_gradient_parallel_to_decoder_directions()
                opt.step()
                losses[backend].append(loss.item())
        params[backend] = [p.detach().clone() for p in sae.parameters()]
    assert losses["triton"] == pytest.approx(losses["reference"], rel=1e-5)
    for a, b in zip(params["triton"], params["reference"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_autocast_runs_kernels_in_bf16_with_fp32_master_weights() -> None:
    sae = TopKSAE(16, 64, 4, seed=0)
    x = _data(n=10, d=16)
    assert sae.compute_dtype() == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sae.compute_dtype() == torch.bfloat16
        out = sae(x, dead_mask=torch.arange(64) < 5)
    assert out.recon.dtype == torch.bfloat16 and out.fvu.dtype == torch.float32
    (out.fvu + out.auxk_loss).backward()
    assert sae.W_enc.grad.dtype == torch.float32 and sae.W_enc.grad.abs().sum() > 0


def test_cpu_training_is_bit_reproducible() -> None:
    """Two identical CPU runs (reference path, AuxK on) give bit-identical parameters. At this size the gradient
    of an advanced-indexing gather (parallel accumulating index_put) differed in the last bits between runs."""

    def run() -> list[torch.Tensor]:
        x = torch.randn(4096, 96, generator=torch.Generator().manual_seed(0))
        sae = TopKSAE(96, 384, 16, seed=3)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        dead = torch.arange(384) % 5 == 0
        for _ in range(3):
            out = sae(x, dead_mask=dead)
            opt.zero_grad()
            (out.fvu + out.auxk_loss / 32).backward()
            opt.step()
        return [p.detach().clone() for p in sae.parameters()]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_float64_gradcheck_of_fvu() -> None:
    """A float64 TopKSAE keeps float64 through FVU and AuxK (they used to be computed from x.float(), which made
    this gradcheck fail), on the CPU path. AuxK is not gradchecked: its target, the residual, is detached on
    purpose, which finite differences do not know."""
    from tests.kernels._tolerances import GRADCHECK

    sae = TopKSAE(5, 12, 3, dtype=torch.float64, seed=0)
    x = _data(n=6, d=5, seed=3).double().requires_grad_(True)
    dead = torch.arange(12) % 3 == 0
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    params = tuple(getattr(sae, name).detach().clone().requires_grad_(True) for name in names)

    def forward(x: torch.Tensor, *ps: torch.Tensor):
        return torch.func.functional_call(sae, dict(zip(names, ps)), (x,), {"dead_mask": dead, "k_aux": 2})

    out = forward(x, *params)
    assert out.fvu.dtype == out.auxk_loss.dtype == torch.float64 and out.auxk_loss.item() > 0
    assert torch.autograd.gradcheck(lambda *args: forward(*args).fvu, (x, *params), **GRADCHECK)


def test_single_row_batch_raises_and_empty_batch_works() -> None:
    """N = 1: Σ‖x − mean(x)‖² = 0, so the FVU would be inf with NaN gradients: a clear error instead."""
    sae = TopKSAE(12, 40, 4, seed=0)
    with pytest.raises(ValueError, match=r"N = 0 or N >= 2"):
        sae(_data(n=1))
    out = sae(torch.zeros(0, 12), dead_mask=torch.ones(40, dtype=torch.bool))
    assert out.fvu.item() == 0.0 and out.auxk_loss.item() == 0.0
    out = sae(_data(n=2))
    assert torch.isfinite(out.fvu)
    v, i = sae.encode(_data(n=1))  # single rows still encode and decode
    assert sae.decode(v, i).shape == (1, 12)


def test_shares_of_a_batch_with_its_total_variance_sum_to_the_batch_losses() -> None:
    """A data-parallel rank passes the whole batch's variance: the slices' losses (1-row and empty slices
    included) sum to the whole batch's FVU and AuxK, and their gradients to its gradient."""
    sae = TopKSAE(12, 40, 4, seed=0).double()
    x = _data(n=5).double()
    dead = torch.arange(40) % 3 == 0
    whole = sae(x, dead_mask=dead, k_aux=6)
    tv = (x - x.mean(0)).pow(2).sum()
    parts = [sae(x[a:b], dead_mask=dead, k_aux=6, total_variance=tv) for a, b in ((0, 3), (3, 4), (4, 4), (4, 5))]
    torch.testing.assert_close(sum(p.fvu for p in parts), whole.fvu)
    torch.testing.assert_close(sum(p.auxk_loss for p in parts), whole.auxk_loss)
    whole.fvu.backward()
    g_whole = sae.W_enc.grad.clone()
    sae.zero_grad()
    sum(p.fvu for p in parts).backward()
    torch.testing.assert_close(sae.W_enc.grad, g_whole)
    with pytest.raises(ValueError, match="total_variance"):
        sae(x, total_variance=tv.reshape(1))


def test_default_k_aux_for_one_input_dimension_and_mask_checks() -> None:
    sae = TopKSAE(1, 6, 1, seed=0)
    out = sae(_data(n=5, d=1), dead_mask=torch.arange(6) >= 2)  # k_aux = max(1, 1 // 2) = 1
    assert out.auxk_loss.item() >= 0 and torch.isfinite(out.auxk_loss)
    with pytest.raises(ValueError, match="dead_mask must be a bool tensor"):
        sae(_data(n=5, d=1), dead_mask=torch.ones(6))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, num_latents=6\)"):
        sae.decode(torch.ones(2, 1), torch.full((2, 1), 6))


def test_losses_use_the_given_x_under_autocast() -> None:
    """With fp32 master weights under bf16 autocast the kernels take x in bf16, but the residual and the variance
    use the given fp32 x."""
    sae = TopKSAE(16, 64, 4, seed=0)
    x = _data(n=10, d=16) * 1.001
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    xf = x.double()
    expected = (xf - out.recon.double()).pow(2).sum() / (xf - xf.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.fvu.double(), expected, atol=1e-6, rtol=1e-5)
