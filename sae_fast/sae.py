"""TopKSAE: a TopK sparse autoencoder whose encode/decode run on sae_fast's kernels (on CUDA) or its sparse CPU path."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import ops

__all__ = ["ForwardOutput", "TopKSAE", "geometric_median"]


class ForwardOutput(NamedTuple):
    """Result of `TopKSAE.forward`.

    recon: (N, d) reconstruction (with b_dec); values/indices: (N, k) top-k activations;
    fvu: scalar Σ‖x − x̂‖² / Σ‖x − mean(x)‖²; auxk_loss: scalar AuxK loss (0 without dead latents). Both losses
    are computed from the given x (not its cast to the compute dtype) in promote_types(x's dtype, recon's dtype,
    float32): fp32 for 16-bit and fp32 inputs, fp64 for a float64 model or input.
    """

    recon: Tensor
    values: Tensor
    indices: Tensor
    fvu: Tensor
    auxk_loss: Tensor


def geometric_median(points: Tensor, *, max_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """Geometric median of the rows of `points` (N, d) by Weiszfeld's iteration, computed in float64."""
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"points must have shape (N>0, d), got {tuple(points.shape)}")
    p = points.detach().double()
    median = p.mean(0)
    for _ in range(max_iter):
        dist = (p - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * p).sum(0) / weights.sum()
        shift = (new - median).norm()
        median = new
        if shift <= tol * max(1.0, float(median.norm())):
            break
    return median.to(points.dtype)


class TopKSAE(nn.Module):
    """x̂ = b_dec + Σ_{top-k} relu(W_enc (x − b_dec) + b_enc)_i · W_dec[i].

    Parameters: W_enc (F, d), b_enc (F,), W_dec (F, d) with unit-norm rows, b_dec (d,). Tied init: W_dec is
    W_enc with rows normalised. With `seed`, the init depends only on the seed (drawn on the CPU, then moved).
    """

    def __init__(
        self,
        d_in: int,
        num_latents: int,
        k: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("num_latents", num_latents), ("k", k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if k > num_latents:
            raise ValueError(f"k={k} must not exceed num_latents={num_latents}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.d_in = d_in
        self.num_latents = num_latents
        self.k = k
        generator = torch.Generator(device="cpu")
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        bound = 1.0 / d_in**0.5
        w = torch.empty(num_latents, d_in, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        w_dec = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc = nn.Parameter(w.to(device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(num_latents, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(w_dec.to(device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, num_latents={self.num_latents}, k={self.k}"

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def compute_dtype(self) -> torch.dtype:
        """dtype of the kernels' inputs: the autocast dtype when autocast is on for the parameters' device and the
        parameters are fp32 (fp32 master weights, bf16 GEMMs), else the parameters' dtype."""
        device_type = self.W_enc.device.type
        if self.dtype == torch.float32 and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.dtype

    def _weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cdtype = self.compute_dtype()
        return tuple(p.to(cdtype) for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))  # type: ignore[return-value]

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must have shape (N, {self.d_in}), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must be floating point, got {x.dtype}")
        return x.to(self.compute_dtype())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, d) -> top-k (values (N, k), indices (N, k) int64)."""
        x = self._check_x(x)
        W_enc, b_enc, _, b_dec = self._weights()
        out = ops.encode(x - b_dec, W_enc, b_enc, self.k)
        return out.values, out.indices

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """(N, k) values and indices -> (N, d) reconstruction including b_dec."""
        _, _, W_dec, b_dec = self._weights()
        return ops.decode(values.to(W_dec.dtype), indices, W_dec) + b_dec

    def forward(
        self,
        x: Tensor,
        *,
        dead_mask: Tensor | None = None,
        k_aux: int | None = None,
        total_variance: Tensor | None = None,
        check_finite: bool = True,
    ) -> ForwardOutput:
        """Reconstruction, FVU and (with `dead_mask`) the AuxK loss.

        AuxK (Gao et al. 2024): the top-k_aux (default max(1, d_in // 2)) relu pre-activations among dead latents
        reconstruct the detached residual x − x̂ with W_dec only (no b_dec); the loss is
        min(num_dead / k_aux, 1) · ‖ê − e‖² / Σ‖x − mean(x)‖². Its gradient reaches W_enc, b_enc and W_dec.
        Batch size: N = 0 gives zero losses; N = 1 raises ValueError, since the FVU's denominator
        Σ‖x − mean(x)‖² of one row is 0 (the FVU would be inf and its gradient NaN): use `encode`/`decode` to
        reconstruct single rows. A batch of N >= 2 identical rows has the same zero denominator (inf FVU); it is
        not checked, as that would cost a host sync per step.
        `total_variance` (scalar) replaces Σ‖x − mean(x)‖² as both losses' denominator: a data-parallel rank
        passes the whole batch's, so its losses are its share of the global ones (any N, 1 included).
        `check_finite=False` skips the encoder's scans of x, b_enc and the selected values for non-finite numbers
        (host syncs; a trainer that checks its batches and its losses itself turns them off).
        """
        x_in, x = x, self._check_x(x)  # the residual uses the given x, not its cast to the compute dtype
        if total_variance is not None and (not isinstance(total_variance, Tensor) or total_variance.dim() != 0):
            raise ValueError("total_variance must be a scalar tensor")
        if x.shape[0] == 1 and total_variance is None:
            raise ValueError(
                "forward needs N = 0 or N >= 2 rows: the FVU of one row divides by Σ‖x − mean(x)‖² = 0 "
                "(use encode/decode for a single row)"
            )
        if k_aux is None:
            k_aux = max(1, self.d_in // 2)
        if dead_mask is not None:
            ops.check_dead_mask(dead_mask, self.num_latents, self.device)
        use_aux = dead_mask is not None and bool(dead_mask.any())
        W_enc, b_enc, W_dec, b_dec = self._weights()
        enc = ops.encode(x - b_dec, W_enc, b_enc, self.k, dead_mask=dead_mask if use_aux else None, k_aux=k_aux,
                         check_finite=check_finite)
        if use_aux:
            assert dead_mask is not None and enc.aux_values is not None and enc.aux_indices is not None
            # one op for both: on the kernel path its backward builds a single dW_dec (AuxK dense or sparse);
            # the encoder's indices and values need no second check
            decoded, aux_decoded = ops.decode_with_aux(
                enc.values, enc.indices, enc.aux_values, enc.aux_indices, W_dec, dead_mask,
                check_indices=False, check_finite=False,
            )  # fmt: skip
        else:
            decoded = ops.decode(enc.values, enc.indices, W_dec, check_indices=False, check_finite=False)
            aux_decoded = None
        recon = decoded + b_dec
        # fp32 for 16-bit inputs, fp64 kept for a fp64 model or input (x.float() would downcast it)
        acc = torch.promote_types(torch.promote_types(x_in.dtype, recon.dtype), torch.float32)
        xa = x_in.to(acc)
        if x.shape[0] == 0:
            zero = recon.to(acc).sum() * 0.0
            return ForwardOutput(recon, enc.values, enc.indices, zero, zero.clone())
        recon_acc = recon.to(acc)
        if total_variance is None:
            total_variance = (xa - xa.mean(0)).pow(2).sum()
        else:
            total_variance = total_variance.to(acc)
        # Σ‖x − x̂‖² as one fused op (forward and backward one pass each, no residual kept for autograd)
        fvu = torch.nn.functional.mse_loss(recon_acc, xa, reduction="sum") / total_variance
        if aux_decoded is not None:
            assert dead_mask is not None
            num_dead = dead_mask.sum().to(acc)
            scale = (num_dead / k_aux).clamp(max=1.0)
            aux_recon = aux_decoded.to(acc)  # W_dec only: no b_dec in the AuxK reconstruction
            residual = (xa - recon_acc).detach()
            auxk_loss = scale * torch.nn.functional.mse_loss(aux_recon, residual, reduction="sum") / total_variance
        else:
            auxk_loss = torch.zeros((), dtype=acc, device=x.device)
        return ForwardOutput(recon, enc.values, enc.indices, fvu, auxk_loss)

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every W_dec row to unit L2 norm (in place; one fused pass on the GPU)."""
        ops.normalize_rows_(self.W_dec.data)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of W_dec.grad the component parallel to each decoder row (call after backward)."""
        if self.W_dec.grad is not None:
            ops.remove_parallel_component_(self.W_dec.grad, self.W_dec.data)

    @torch.no_grad()
    def init_b_dec_from_data(self, x: Tensor, method: str = "geometric_median") -> None:
        """Set b_dec to the mean or the geometric median of the rows of x (N, d)."""
        x = self._check_x(x)
        if x.shape[0] == 0:
            raise ValueError("x must have at least one row")
        if method == "mean":
            center = x.float().mean(0)
        elif method == "geometric_median":
            center = geometric_median(x.float())
        else:
            raise ValueError(f"method must be 'mean' or 'geometric_median', got {method!r}")
        self.b_dec.copy_(center.to(device=self.b_dec.device, dtype=self.dtype))
