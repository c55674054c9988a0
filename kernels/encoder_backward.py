"""Sparse encoder backward: dx, dW_enc and db_enc from the selected (token, latent) pairs only.

Given the gradient of the selected activations (top-k and AuxK columns concatenated), with the ReLU gate
`values > 0` applied here:
- dx[n]     = Σ_j g[n, j] · W_enc[indices[n, j]]      (weighted row gather, kernels/decoder.py)
- dW_enc[f] = Σ_{(n, j): indices[n, j] = f} g[n, j] · x[n]  (latent-sorted CSR rows, kernels/sparse_transpose.py)
- db_enc[f] = Σ_{(n, j): indices[n, j] = f} g[n, j]          (column sums of the same pass)
Work O(N·k·d + F·d), extra memory O(N·k + F): never an (N·k × d) temporary nor a dense (N × F) gradient.
"""

from __future__ import annotations

import torch

from ._common import FLOAT_DTYPES, check_devices, check_index_range, check_tensor
from .decoder import gather_weighted_sum
from .sparse_transpose import sparse_transpose_matmul

__all__ = ["encoder_backward"]


def encoder_backward(
    grad_values: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    x: torch.Tensor,
    W_enc: torch.Tensor,
    *,
    need_dx: bool = True,
    need_dW: bool = True,
    check_range: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. (x, W_enc, b_enc) of the selected relu activations.

    grad_values, values: (N, k) float; indices (N, k) int64 in [0, F); x (N, d), W_enc (F, d) one dtype in
    {fp32, bf16, fp16}; all contiguous, one device. Returns dx (N, d) in x's dtype, dW_enc (F, d) in W_enc's dtype
    and db_enc (F,) in W_enc's dtype (None where not needed). `check_range`: verify the index range first (one
    host sync; out-of-range indices would be read out of bounds); callers with the encoder's indices skip it.
    """
    n, k = values.shape
    f, d = W_enc.shape
    check_tensor("grad_values", grad_values, (n, k), (*FLOAT_DTYPES, torch.float64))
    check_tensor("values", values, (n, k), (*FLOAT_DTYPES, torch.float64))
    check_tensor("indices", indices, (n, k), (torch.int64,))
    check_tensor("x", x, (n, d), FLOAT_DTYPES)
    check_tensor("W_enc", W_enc, (f, d), (x.dtype,))
    check_devices(grad_values=grad_values, values=values, indices=indices, x=x, W_enc=W_enc)
    if check_range:
        check_index_range("indices", indices, f)
    g = (grad_values.float() * (values > 0)).contiguous()
    dx = gather_weighted_sum(g, indices, W_enc, check_range=False).to(x.dtype) if need_dx else None
    dW = db = None
    if need_dW:
        dW, colsum = sparse_transpose_matmul(
            indices, g, x, f, out_dtype=W_enc.dtype, with_colsum=True, check_range=False
        )
        assert colsum is not None
        db = colsum.to(W_enc.dtype)
    return dx, dW, db
