"""Differentiable SAE operations: input checks (:mod:`sae_fast.ops_checks`), then dispatch to the Triton kernels
or the reference.

Dispatch (`backend()`): "auto" (default) runs the Triton kernels on CUDA tensors and `sae_fast.cpu_ops` on CPU
tensors — the reference's selection (fp32 pre-activations, `sae_fast.topk`'s tie rule) with a backward over the
selected (row, latent) pairs only, and a sparse fp32/fp64 decode (the same sums as the reference in another
order); fp64 CUDA tensors take the reference with `sae_fast.topk`'s selection; "triton" forces the
kernels (on CPU this needs TRITON_INTERPRET=1, set before the kernels are imported — tests/conftest.py does it);
"reference" forces the plain-PyTorch oracle everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import cpu_ops, reference
from .ops_checks import check_aux as _check_aux
from .ops_checks import check_dead_mask as _check_dead_mask
from .ops_checks import check_decode as _check_decode
from .ops_checks import check_encode as _check_encode
from .ops_checks import check_k as _check_k
from .ops_checks import check_matrix as _check_matrix
from .ops_checks import require_finite as _check_finite
from .topk import select_topk_lowest_index

__all__ = [
    "AUX_DENSE_MAX_ELEMENTS",
    "AUX_DENSE_MAX_RATIO",
    "ENCODER_METHOD",
    "EncodeOutput",
    "aux_is_dense",
    "backend",
    "decode",
    "decode_aux",
    "decode_many",
    "decode_with_aux",
    "encode",
    "get_backend",
    "normalize_rows_",
    "remove_parallel_component_",
    "set_backend",
]

_BACKENDS = ("auto", "triton", "reference")
_backend = os.environ.get("SAE_FAST_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Select "auto", "triton" or "reference" for every following call (process-wide)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The current backend name."""
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager: `with ops.backend("triton"): ...` forces the kernels (tests use it on CPU)."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _use_triton(t: Tensor) -> bool:
    if _backend == "reference" or t.dtype == torch.float64:  # the kernels take fp32/bf16/fp16
        return False
    if _backend == "triton":
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the Triton backend on CPU tensors needs TRITON_INTERPRET=1 set before import")
        return True
    return t.device.type == "cuda"


# AuxK as dense GEMMs over the dead latents while there are at most AUX_DENSE_MAX_RATIO dead latents per AuxK
# slot and the (N, num_dead) code matrix stays within AUX_DENSE_MAX_ELEMENTS. Per (row, latent) a tensor-core
# GEMM costs far less than a per-pair gather (H100, bf16: the sparse decoder ran at ~0.45 TMAC/s, cuBLAS at
# ~300), so even a 1/256-dense code matrix is cheaper as a GEMM; the element cap (2^29: 1 GiB in bf16, two such
# matrices live at once) keeps many dead latents (early training at 2^20) on the memory-light sparse path.
AUX_DENSE_MAX_RATIO = 256
AUX_DENSE_MAX_ELEMENTS = 2**29

# How the encoder's top-k is found on the kernel path (kernels/encoder_topk.py): "tiles" (the fused GEMM kernel),
# "cublas" (fp32 cuBLAS chunks + the candidate kernel) or "running". Module-wide; SAE_FAST_ENCODER sets it.
ENCODER_METHOD = os.environ.get("SAE_FAST_ENCODER", "tiles")


def aux_is_dense(k_aux: int, num_dead: int, rows: int = 0) -> bool:
    """Whether AuxK with k_aux slots per row over num_dead dead latents, for `rows` tokens, runs as dense GEMMs."""
    return 0 < num_dead <= AUX_DENSE_MAX_RATIO * k_aux and rows * num_dead <= AUX_DENSE_MAX_ELEMENTS


def _dead_positions(dead_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(dead latent indices ascending (D,), position of every latent in that list (F,); -1 where alive)."""
    dead_idx = torch.nonzero(dead_mask, as_tuple=False).squeeze(1)
    return dead_idx, torch.cumsum(dead_mask, 0) - 1


class EncodeOutput(NamedTuple):
    """Top-k activations and, when a dead mask was given, the AuxK ones (None otherwise)."""

    values: Tensor
    indices: Tensor
    aux_values: Tensor | None
    aux_indices: Tensor | None


def encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    *,
    dead_mask: Tensor | None = None,
    k_aux: int | None = None,
    check_finite: bool = True,
) -> EncodeOutput:
    """Top-k of relu(x W_encᵀ + b_enc) per row, and the AuxK top-k_aux among dead latents.

    x: (N, d) already centred by b_dec; W_enc: (F, d); b_enc: (F,), all one float dtype, one device.
    Returns values (N, k) in x's dtype, indices (N, k) int64 (values descending, ties: lowest index), and with
    `dead_mask` (F,) bool: aux_values / aux_indices (N, min(k_aux, num_dead)); k_aux defaults to max(1, d // 2).
    Selection is on the fp32 pre-activations on every path. Differentiable w.r.t. x, W_enc, b_enc through both
    the top-k and the AuxK values.
    `check_finite`: raise ValueError naming the input if x or b_enc holds NaN/inf (O(N·d + F)), or if a selected
    value is not finite (O(N·k); W_enc, too large to scan every step, is then scanned and named if it is the
    culprit). A NaN or +inf weight is seen that way: its pre-activations are NaN (the kernels make them +inf) or
    +inf, and both sort above every finite value. A -inf pre-activation is a ReLU zero, not an error.
    """
    _check_encode(x, W_enc, b_enc, k, dead_mask)
    if dead_mask is not None:
        if k_aux is None:
            k_aux = max(1, x.shape[1] // 2)
        _check_k("k_aux", k_aux)
    if check_finite:
        _check_finite("x", x)
        _check_finite("b_enc", b_enc)
    if _use_triton(x):
        values, indices, aux_values, aux_indices = _EncodeTopK.apply(x, W_enc, b_enc, k, dead_mask, k_aux)
        out = EncodeOutput(values, indices, *((None, None) if dead_mask is None else (aux_values, aux_indices)))
    elif _backend != "reference" and x.device.type == "cpu":
        out = EncodeOutput(*cpu_ops.encode_topk(x, W_enc, b_enc, k, dead_mask, k_aux))
    else:
        topk = reference.topk_lowest_index if _backend == "reference" else _topk_without_sort
        out = EncodeOutput(*reference.encode_topk(x, W_enc, b_enc, k, dead_mask, k_aux, topk=topk))
    if check_finite:
        finite = torch.isfinite(out.values).all()
        if out.aux_values is not None:  # one host sync for both, without copying them together
            finite = finite & torch.isfinite(out.aux_values).all()
        if not bool(finite):
            _check_finite("W_enc", W_enc)
            raise ValueError("the encoder's pre-activations overflowed to inf (inputs finite, values too large)")
    return out


def _topk_without_sort(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`reference.topk_lowest_index` without its full sort (`select_topk_lowest_index`: the same selection and
    order): the fp64 CUDA path's top-k. Values are gathered from the scores, so
    autograd differentiates them as in the reference."""
    _, indices = select_topk_lowest_index(scores.detach(), k)
    return scores.gather(-1, indices), indices


def decode(
    values: Tensor, indices: Tensor, W_dec: Tensor, *, check_indices: bool = True, check_finite: bool = True
) -> Tensor:
    """Σ_j values[n, j] · W_dec[indices[n, j]] -> (N, d) in W_dec's dtype (no decoder bias).

    values, indices: (N, k); W_dec: (F, d). Differentiable w.r.t. values and W_dec.
    `check_indices`: raise ValueError unless every index lies in [0, F) (one host sync; the kernels would read out
    of bounds). `check_finite`: raise ValueError if values hold NaN/inf. Turn both off for indices and values
    straight from `encode` (already checked).
    """
    return decode_many([(values, indices)], W_dec, check_indices=check_indices, check_finite=check_finite)[0]


def decode_many(
    pairs: Sequence[tuple[Tensor, Tensor]], W_dec: Tensor, *, check_indices: bool = True, check_finite: bool = True
) -> list[Tensor]:
    """`decode` of several (values, indices) pairs with one W_dec, e.g. the top-k and the AuxK activations.

    Same results as separate `decode` calls, but on the kernel path the backward builds ONE row-sparse dW_dec
    over all pairs (one latent-sorted pass) instead of one dense (F, d) gradient per call plus their sum.
    Each values/indices: (N, k_i) (N may differ between pairs); checks as in `decode`.
    """
    if not pairs:
        raise ValueError("pairs must hold at least one (values, indices) pair")
    for values, indices in pairs:
        _check_decode(values, indices, W_dec, check_indices=check_indices, check_finite=check_finite)
    if _use_triton(W_dec):
        flat = [t for values, indices in pairs for t in (values, indices)]
        return list(_DecodeMany.apply(W_dec, *flat))
    return [_decode_cpu(values, indices.long(), W_dec) for values, indices in pairs]


def _decode_cpu(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """The torch path of `decode`: `cpu_ops.decode` (sparse forward and backward) where it applies — CPU, fp32 or
    fp64 with values in W_dec's dtype — else the reference (also under the "reference" backend)."""
    usable = (W_dec.device.type == "cpu" and W_dec.dtype in (torch.float32, torch.float64)
              and values.dtype == W_dec.dtype)
    if _backend == "reference" or not usable:
        return reference.decode(values, indices, W_dec)
    return cpu_ops.decode(values, indices, W_dec)


def decode_aux(
    values: Tensor,
    indices: Tensor,
    W_dec: Tensor,
    dead_mask: Tensor,
    *,
    check_indices: bool = True,
    check_finite: bool = True,
) -> Tensor:
    """`decode` of the AuxK activations (indices all dead latents): Σ_j values[n, j] · W_dec[indices[n, j]].

    With `aux_is_dense(k_aux, num_dead, N)` this is one GEMM over the dead latents — the (N, num_dead) code matrix
    times W_dec[dead] — whose backward is two more GEMMs; otherwise the sparse `decode`. values, indices:
    (N, k_aux); W_dec: (F, d); dead_mask: (F,) bool. Returns (N, d) in W_dec's dtype. Checks as in `decode`, and
    `check_indices` also requires every index to be a dead latent.
    """
    _check_decode(values, indices, W_dec, check_indices=check_indices, check_finite=check_finite)
    _check_aux(indices, dead_mask, W_dec, check_indices)
    num_dead = int(dead_mask.sum())
    if not aux_is_dense(values.shape[1], num_dead, values.shape[0]):
        return decode(values, indices, W_dec, check_indices=False, check_finite=False)
    dead_idx, position = _dead_positions(dead_mask)
    codes = values.new_zeros((values.shape[0], num_dead)).scatter(1, position[indices], values)
    return (codes.to(W_dec.dtype) @ W_dec[dead_idx]).to(W_dec.dtype)


def decode_with_aux(
    values: Tensor,
    indices: Tensor,
    aux_values: Tensor,
    aux_indices: Tensor,
    W_dec: Tensor,
    dead_mask: Tensor,
    *,
    check_indices: bool = True,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """(`decode(values, indices, W_dec)`, `decode_aux(aux_values, aux_indices, W_dec, dead_mask)`) as one op.

    On the kernel path its backward builds ONE (F, d) gradient for W_dec: the latent-sorted rows of the top-k
    pairs, plus, for dense AuxK, the GEMM of the dead rows added into it in place (separate calls would each
    allocate a full-size gradient and autograd would add them: 8.6 GB more at (2^20, 4096) in bf16).
    Checks as in `decode_aux`.
    """
    checks = {"check_indices": check_indices, "check_finite": check_finite}
    _check_decode(values, indices, W_dec, **checks)
    _check_decode(aux_values, aux_indices, W_dec, **checks, names=("aux_values", "aux_indices"))
    _check_aux(aux_indices, dead_mask, W_dec, check_indices)
    unchecked = {"check_indices": False, "check_finite": False}
    if not _use_triton(W_dec):
        decoded = decode(values, indices, W_dec, **unchecked)
        return decoded, decode_aux(aux_values, aux_indices, W_dec, dead_mask, **unchecked)
    if not aux_is_dense(aux_values.shape[1], int(dead_mask.sum()), aux_values.shape[0]):
        decoded, aux_decoded = decode_many([(values, indices), (aux_values, aux_indices)], W_dec, **unchecked)
        return decoded, aux_decoded
    dead_idx, position = _dead_positions(dead_mask)
    return _DecodeDenseAux.apply(W_dec, values, indices, aux_values, position[aux_indices], dead_idx)


_ROW_CHUNK_ELEMENTS = 1 << 24  # fp32 working set of the torch path: 64 MiB


def _row_chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, _ROW_CHUNK_ELEMENTS // max(cols, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


@torch.no_grad()
def normalize_rows_(W: Tensor) -> Tensor:
    """Rescale every row of W (F, d) to unit L2 norm in place (norms in fp32; no full-size fp32 copy)."""
    _check_matrix("W", W)
    eps = torch.finfo(torch.float32).eps
    if _use_triton(W) and W.is_contiguous():
        from .kernels.decoder_norm import MAX_D
        from .kernels.decoder_norm import normalize_rows_ as kernel

        if W.shape[1] <= MAX_D:
            return kernel(W, eps)
    for rows in _row_chunks(*W.shape):
        w = W[rows]
        norm = torch.linalg.vector_norm(w, dim=1, keepdim=True, dtype=torch.float32).clamp_min_(eps)
        if w.dtype == torch.float32:
            w.div_(norm)  # in place: the same quotients without a copy
        else:
            W[rows] = (w.to(torch.float32) / norm).to(W.dtype)
    return W


@torch.no_grad()
def remove_parallel_component_(G: Tensor, W: Tensor) -> Tensor:
    """G[r] -= <G[r], u_r> u_r with u_r = W[r] / ||W[r]||, in place (the decoder-gradient projection)."""
    _check_matrix("W", W)
    _check_matrix("G", G, W.shape[1])
    if G.shape != W.shape:
        raise ValueError(f"G must have the shape of W {tuple(W.shape)}, got {tuple(G.shape)}")
    eps = torch.finfo(torch.float32).eps
    if _use_triton(W) and W.is_contiguous() and G.is_contiguous():
        from .kernels.decoder_norm import MAX_D
        from .kernels.decoder_norm import remove_parallel_component_ as kernel

        if W.shape[1] <= MAX_D:
            return kernel(G, W, eps)
    for rows in _row_chunks(*W.shape):
        w = W[rows].float()
        g = G[rows] if G.dtype == torch.float32 else G[rows].float()
        # <g, u> u = (<g, w> / |w|²) w: no u = w / |w| pass; the update in place (addcmul_, no product copy)
        inv = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min_(eps).reciprocal_()
        coef = (g * w).sum(dim=1, keepdim=True).mul_(inv).mul_(inv)
        g.addcmul_(w, coef, value=-1.0)
        if G.dtype != torch.float32:
            G[rows] = g.to(G.dtype)
    return G


class _EncodeTopK(torch.autograd.Function):
    """Fused encoder top-k forward (kernels/encoder_topk.py); sparse backward (kernels/decoder.py gather for dx,
    kernels/sparse_transpose.py for dW_enc and db_enc) over the top-k pairs, and over the AuxK pairs too unless
    `aux_is_dense`, in which case the AuxK part is two GEMMs over the dead latents added in place."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, dead_mask, k_aux):  # type: ignore[override]
        from .kernels.encoder_topk import encoder_topk

        x, W_enc, b_enc = x.contiguous(), W_enc.contiguous(), b_enc.contiguous()
        mask = dead_mask.contiguous() if dead_mask is not None else None
        values, indices, aux_values, aux_indices = encoder_topk(x, W_enc, b_enc, k, mask, k_aux, method=ENCODER_METHOD)
        values = values.to(x.dtype)
        if aux_values is None:
            aux_values = values.new_empty((x.shape[0], 0))
            aux_indices = indices.new_empty((x.shape[0], 0))
        aux_values = aux_values.to(x.dtype)
        ctx.dead_mask = mask
        ctx.aux_dense = mask is not None and aux_is_dense(aux_values.shape[1], int(mask.sum()), x.shape[0])
        ctx.save_for_backward(x, W_enc, values, indices, aux_values, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):  # type: ignore[override]
        from .kernels.encoder_backward import encoder_backward

        x, W_enc, values, indices, aux_values, aux_indices = ctx.saved_tensors
        if grad_values is None:
            grad_values = torch.zeros_like(values)
        if grad_aux_values is None:
            grad_aux_values = torch.zeros_like(aux_values)
        need_dx, need_dW = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if not ctx.aux_dense:  # every selected pair through the sparse kernels
            dx, dW, db = encoder_backward(
                torch.cat([grad_values.float(), grad_aux_values.float()], 1),
                torch.cat([values, aux_values], 1),
                torch.cat([indices, aux_indices], 1),
                x,
                W_enc,
                need_dx=need_dx,
                need_dW=need_dW,
                check_range=False,
            )
            return dx, dW, db, None, None, None
        # top-k pairs sparse; AuxK as GEMMs with the (N, num_dead) gated gradient of the dead pre-activations
        dx, dW, db = encoder_backward(
            grad_values.float(), values, indices, x, W_enc, need_dx=need_dx, need_dW=need_dW, check_range=False
        )
        dead_idx, position = _dead_positions(ctx.dead_mask)
        gated = (grad_aux_values.float() * (aux_values > 0)).to(x.dtype)
        G = gated.new_zeros((x.shape[0], dead_idx.numel())).scatter_(1, position[aux_indices], gated)
        if need_dx:
            dx = dx + G @ W_enc[dead_idx]
        if need_dW:
            dW.index_add_(0, dead_idx, (G.T @ x).to(dW.dtype))
            db.index_add_(0, dead_idx, G.float().sum(0).to(db.dtype))
        return dx, dW, db, None, None, None


class _DecodeMany(torch.autograd.Function):
    """Sparse decode of several (values, indices) pairs (gather, kernels/decoder.py). Backward: k dot products
    per pair for the values and a single latent-sorted row-sparse dW_dec over every pair
    (kernels/sparse_transpose.py)."""

    @staticmethod
    def forward(ctx, W_dec, *flat):  # type: ignore[override]
        from .kernels.decoder import gather_weighted_sum

        W_dec = W_dec.contiguous()
        tensors = [t.contiguous() if i % 2 == 0 else t.long().contiguous() for i, t in enumerate(flat)]
        ctx.save_for_backward(W_dec, *tensors)
        return tuple(
            gather_weighted_sum(tensors[i], tensors[i + 1], W_dec, check_range=False) for i in range(0, len(tensors), 2)
        )

    @staticmethod
    def backward(ctx, *grad_outs):  # type: ignore[override]
        from .kernels.decoder import sparse_dot
        from .kernels.sparse_transpose import sparse_transpose_pairs

        W_dec, *tensors = ctx.saved_tensors
        pairs = [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]
        grads = [
            (g if g is not None else torch.zeros(v.shape[0], W_dec.shape[1], dtype=W_dec.dtype, device=W_dec.device))
            .to(W_dec.dtype)
            .contiguous()
            for g, (v, _) in zip(grad_outs, pairs)
        ]
        grad_flat: list[Tensor | None] = []
        for i, ((values, indices), g) in enumerate(zip(pairs, grads)):
            need = ctx.needs_input_grad[1 + 2 * i]
            grad_flat += [sparse_dot(g, indices, W_dec, check_range=False).to(values.dtype) if need else None, None]
        grad_W = None
        if ctx.needs_input_grad[0]:
            latents, rows, weights, offset = [], [], [], 0
            for (values, indices), g in zip(pairs, grads):
                n, k = indices.shape
                latents.append(indices.reshape(-1))
                rows.append(torch.arange(offset, offset + n, device=g.device).repeat_interleave(k))
                weights.append(values.reshape(-1).float())
                offset += n
            dense = grads[0] if len(grads) == 1 else torch.cat(grads)
            grad_W, _ = sparse_transpose_pairs(
                torch.cat(latents), torch.cat(rows), torch.cat(weights), dense, W_dec.shape[0],
                out_dtype=W_dec.dtype, check_range=False,
            )  # fmt: skip
        return (grad_W, *grad_flat)


class _DecodeDenseAux(torch.autograd.Function):
    """Top-k decode (sparse kernels) and AuxK decode as a GEMM over the dead latents, with one W_dec gradient:
    the latent-sorted rows of the top-k pairs (every row written) plus the dead rows' GEMM added in place."""

    @staticmethod
    def forward(ctx, W_dec, values, indices, aux_values, aux_pos, dead_idx):  # type: ignore[override]
        from .kernels.decoder import gather_weighted_sum

        W_dec, values, indices = W_dec.contiguous(), values.contiguous(), indices.long().contiguous()
        W_dead = W_dec[dead_idx]
        codes = aux_values.new_zeros((aux_values.shape[0], dead_idx.numel())).scatter_(1, aux_pos, aux_values)
        codes = codes.to(W_dec.dtype)
        ctx.save_for_backward(W_dec, values, indices, aux_pos, dead_idx, codes)
        ctx.aux_dtype = aux_values.dtype
        return gather_weighted_sum(values, indices, W_dec, check_range=False), codes @ W_dead

    @staticmethod
    def backward(ctx, grad_out, grad_aux_out):  # type: ignore[override]
        from .kernels.decoder import sparse_dot
        from .kernels.sparse_transpose import sparse_transpose_matmul

        W_dec, values, indices, aux_pos, dead_idx, codes = ctx.saved_tensors
        n, d = values.shape[0], W_dec.shape[1]
        if grad_out is None:
            grad_out = W_dec.new_zeros((n, d))
        if grad_aux_out is None:
            grad_aux_out = W_dec.new_zeros((n, d))
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_aux_out = grad_aux_out.to(W_dec.dtype).contiguous()
        grad_values = None
        if ctx.needs_input_grad[1]:
            grad_values = sparse_dot(grad_out, indices, W_dec, check_range=False).to(values.dtype)
        grad_aux_values = None
        if ctx.needs_input_grad[3]:
            grad_codes = grad_aux_out @ W_dec[dead_idx].T  # (N, num_dead)
            grad_aux_values = grad_codes.gather(1, aux_pos).to(ctx.aux_dtype)
        grad_W = None
        if ctx.needs_input_grad[0]:
            grad_W, _ = sparse_transpose_matmul(
                indices, values, grad_out, W_dec.shape[0], out_dtype=W_dec.dtype, check_range=False
            )
            grad_W.index_add_(0, dead_idx, (codes.T @ grad_aux_out).to(grad_W.dtype))
        return grad_W, grad_values, None, grad_aux_values, None, None


# Public names for what other modules use (sae.py's dead-mask check, optim.py's kernel choice).
check_dead_mask = _check_dead_mask
use_triton = _use_triton
