"""SAE architectures other than TopK, as small modules that satisfy :class:`~.protocol.SparseCoder`.

:class:`ThresholdSAE` covers every architecture whose latent is ``relu(pre) · [pre > θ]`` with
``pre = (x − b_pre) W_encᵀ + b_enc``: standard ReLU SAEs (θ = 0), JumpReLU (a learnt θ per latent), and
BatchTopK / Matryoshka BatchTopK as they run at inference (one global θ). :class:`GatedSAE` is the gated
architecture (Rajamanoharan et al. 2024). Both encode to a sparse COO tensor (N, F) and decode from it.

``b_pre`` is what the encoder subtracts from x first: ``b_dec`` for SAEs trained with the decoder bias on
the input, zeros for those without; the decoder adds ``b_dec``. Memory of ``encode``: the (N, F) dense
pre-activations of the given rows (callers pass chunks of rows; F = 2^20 and N = 1024 is 4 GiB in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GatedSAE", "ThresholdSAE"]


def _param(t: Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> nn.Parameter:
    return nn.Parameter(t.detach().to(device=device, dtype=dtype or t.dtype).clone(), requires_grad=False)


class _Base(nn.Module):
    """Shape checks, the decoder and the protocol's attributes, shared by both architectures."""

    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_pre: Tensor
    k: int | None = None

    def _init_decoder(self, w_dec: Tensor, b_dec: Tensor, b_pre: Tensor, architecture: str,
                      dtype: torch.dtype | None, device: torch.device | str | None) -> None:
        self.num_latents, self.d_in = (int(s) for s in w_dec.shape)
        self.architecture = architecture
        self.W_dec = _param(w_dec, dtype, device)
        self.b_dec = _param(b_dec, dtype, device)
        self.register_buffer("b_pre", b_pre.detach().to(device=device, dtype=self.W_dec.dtype).clone())

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, d_in={self.d_in}, num_latents={self.num_latents}"

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must have shape (N, {self.d_in}), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype) - self.b_pre

    def decode(self, code: Tensor) -> Tensor:
        """Sparse (or dense) code (N, F) -> (N, d) reconstruction including b_dec. Memory: O(nnz + N·d)."""
        if code.dim() != 2 or code.shape[1] != self.num_latents:
            raise ValueError(f"code must have shape (N, {self.num_latents}), got {tuple(code.shape)}")
        code = code.to(self.dtype)
        out = torch.sparse.mm(code, self.W_dec) if code.is_sparse else code @ self.W_dec
        return out + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of x (N, d)."""
        return self.decode(self.encode(x))

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


class ThresholdSAE(_Base):
    """``f = relu(pre) · [pre > θ]``, ``pre = (x − b_pre) W_encᵀ + b_enc``; ``x̂ = f W_dec + b_dec``.

    Parameters: W_enc (F, d), b_enc (F,), W_dec (F, d), b_dec (d,), threshold (F,), b_pre (d,) (a buffer).
    """

    def __init__(self, w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, b_dec: Tensor, threshold: Tensor,
                 b_pre: Tensor, *, architecture: str, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self._init_decoder(w_dec, b_dec, b_pre, architecture, dtype, device)
        self.W_enc = _param(w_enc, self.dtype, device)
        self.b_enc = _param(b_enc, self.dtype, device)
        self.threshold = _param(threshold.expand(self.num_latents), self.dtype, device)

    def encode(self, x: Tensor) -> Tensor:
        """(N, d) -> sparse COO code (N, F). Memory: O(N·F) dense pre-activations for the given rows."""
        pre = self._check_x(x) @ self.W_enc.T + self.b_enc
        return (pre.relu() * (pre > self.threshold)).to_sparse()


class GatedSAE(_Base):
    """Gated SAE: ``f = [x' W_encᵀ + b_gate > 0] · relu(x' (W_enc · e^{r_mag})ᵀ + b_mag)``, ``x' = x − b_pre``.

    Parameters: W_enc (F, d), b_gate, b_mag, r_mag (F,), W_dec (F, d), b_dec (d,), b_pre (d,) (a buffer).
    """

    def __init__(self, w_enc: Tensor, b_gate: Tensor, b_mag: Tensor, r_mag: Tensor, w_dec: Tensor,
                 b_dec: Tensor, b_pre: Tensor, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self._init_decoder(w_dec, b_dec, b_pre, "gated", dtype, device)
        self.W_enc = _param(w_enc, self.dtype, device)
        self.b_gate = _param(b_gate, self.dtype, device)
        self.b_mag = _param(b_mag, self.dtype, device)
        self.r_mag = _param(r_mag, self.dtype, device)

    def encode(self, x: Tensor) -> Tensor:
        """(N, d) -> sparse COO code (N, F). Memory: O(N·F) dense pre-activations for the given rows."""
        xc = self._check_x(x)
        gate = (xc @ self.W_enc.T + self.b_gate) > 0
        magnitude = (xc @ (self.W_enc * self.r_mag.exp()[:, None]).T + self.b_mag).relu()
        return (magnitude * gate).to_sparse()
