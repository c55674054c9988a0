"""One-to-one matching variants (method.md §2): Hungarian (scipy's linear_sum_assignment), mutual nearest
neighbours, the encoder-decoder rule of Paulo & Belrose, PW-MCC (Song et al.), and the Hungarian/argmax IoU.

Hungarian matching needs the dense F_A x F_B cosine matrix (O(F^2) memory, up to O(F^3) time), so it is
limited to ``max_features`` rows; mutual nearest neighbours uses one tiled exact sweep (no F x F matrix).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import UsageError
from ..matching import ArrayLike, as_unit_rows, match


def _dense_cos(A: ArrayLike, B: ArrayLike, absolute: bool, max_features: int) -> np.ndarray:
    a, b = as_unit_rows("A", A, "cpu"), as_unit_rows("B", B, "cpu")
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"A and B must have the same d, got A {tuple(a.shape)} and B {tuple(b.shape)}")
    if max(a.shape[0], b.shape[0]) > max_features:
        raise UsageError(f"Hungarian matching needs a dense F_A x F_B matrix; F = {max(a.shape[0], b.shape[0])} "
                         f"exceeds max_features = {max_features} (raise it if you have the memory and time)")
    c = (a @ b.T).numpy().astype(np.float64)
    return np.abs(c) if absolute else c


def hungarian_match(A: ArrayLike, B: ArrayLike, *, absolute: bool = False,
                    max_features: int = 2**15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of the rows of A and B maximising the summed cosine (Hungarian / LAPJV via
    ``scipy.optimize.linear_sum_assignment``). Returns (rows of A, their partners in B, cosines), min(F_A, F_B)
    pairs. Dense: O(F^2) memory and up to O(F^3) time, so limited to ``max_features`` rows."""

    c = _dense_cos(A, B, absolute, max_features)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return rows, cols, c[rows, cols].astype(np.float32)


def hungarian_argmax_iou(A: ArrayLike, B: ArrayLike, *, theta: float = 0.7, absolute: bool = False,
                         max_features: int = 2**15) -> float:
    """Agreement of the two rules on which features of A are matched: IoU of {i : max_j cos(i, j) >= theta}
    (many-to-one argmax) and {i : cos(i, hungarian(i)) >= theta}. 1.0 when both sets are empty."""
    c = _dense_cos(A, B, absolute, max_features)
    argmax_set = c.max(axis=1) >= theta

    rows, cols = linear_sum_assignment(c, maximize=True)
    hung_set = np.zeros(c.shape[0], dtype=bool)
    hung_set[rows] = c[rows, cols] >= theta
    union = int((argmax_set | hung_set).sum())
    return 1.0 if union == 0 else int((argmax_set & hung_set).sum()) / union


def mutual_nearest_neighbours(A: ArrayLike, B: ArrayLike, *, theta: float | None = None, absolute: bool = False,
                              **match_kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) where j is i's best row in B and i is j's best row in A (a partial 1:1 matching from one
    exact sweep, row and column maxima together), optionally only those with cosine >= theta.
    Returns (rows of A, rows of B, cosines)."""
    m = match(A, B, both=True, absolute=absolute, **match_kwargs)
    keep = m.mutual(theta).numpy()
    rows = np.nonzero(keep)[0]
    return rows, m.index_ab[rows, 0].numpy(), m.cos_ab[rows, 0].numpy()


def encoder_decoder_match(enc_A: ArrayLike, dec_A: ArrayLike, enc_B: ArrayLike, dec_B: ArrayLike, *,
                          theta: float = 0.7, absolute: bool = False,
                          max_features: int = 2**15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shared-feature rule of Paulo & Belrose (2025): Hungarian matching separately on encoder rows and on
    decoder rows; feature i of A is shared with feature j of B when both matchings pick j for i and both the
    encoder and the decoder cosines are >= theta.

    Parameters
    ----------
    enc_A, dec_A, enc_B, dec_B : encoder and decoder rows (F, d) of SAEs A and B (feature directions: transpose
        SAELens's (d, F) ``W_enc``); each SAE's encoder and decoder have one shape, both SAEs one d.
    theta : the cosine both matchings must reach.
    absolute : match on |cos|.
    max_features : the largest F accepted (the Hungarian step is dense).

    Returns
    -------
    (rows of A, partners in B, encoder cosines, decoder cosines), one entry per shared feature.

    Memory: the dense F_A x F_B cosine matrix (float64), once per matching, O(F^2); time up to O(F^3).
    """
    shapes = {name: tuple(getattr(x, "shape", ())) for name, x in
              (("enc_A", enc_A), ("dec_A", dec_A), ("enc_B", enc_B), ("dec_B", dec_B))}
    for enc, dec in (("enc_A", "dec_A"), ("enc_B", "dec_B")):
        if shapes[enc] != shapes[dec]:
            hint = (f"; {enc} looks like SAELens's (d, F) W_enc: pass W_enc.T"
                    if len(shapes[dec]) == 2 and shapes[enc] == shapes[dec][::-1] else "")
            raise UsageError(f"{enc} and {dec} must both have shape (F, d), got {enc} {shapes[enc]} and {dec} "
                             f"{shapes[dec]}{hint}")
    if len(shapes["dec_A"]) == 2 and len(shapes["dec_B"]) == 2 and shapes["dec_A"][1] != shapes["dec_B"][1]:
        raise UsageError(f"both SAEs must have the same d, got dec_A {shapes['dec_A']} and dec_B {shapes['dec_B']}")
    r_e, c_e, cos_e = hungarian_match(enc_A, enc_B, absolute=absolute, max_features=max_features)
    r_d, c_d, cos_d = hungarian_match(dec_A, dec_B, absolute=absolute, max_features=max_features)
    n = max(int(r_e.max(initial=-1)), int(r_d.max(initial=-1))) + 1
    part_e, part_d = np.full(n, -1), np.full(n, -1)
    ce, cd = np.full(n, -np.inf, np.float32), np.full(n, -np.inf, np.float32)
    part_e[r_e], ce[r_e] = c_e, cos_e
    part_d[r_d], cd[r_d] = c_d, cos_d
    rows = np.nonzero((part_e == part_d) & (part_e >= 0) & (ce >= theta) & (cd >= theta))[0]
    return rows, part_d[rows], ce[rows], cd[rows]


def pw_mcc(A: ArrayLike, B: ArrayLike, *, absolute: bool = False, max_features: int = 2**15) -> float:
    """Pairwise dictionary mean correlation coefficient (Song et al. 2025): the mean cosine of the
    Hungarian-matched decoder rows of two SAEs (signed unless ``absolute``). A per-pair summary in [-1, 1]."""
    _, _, cos = hungarian_match(A, B, absolute=absolute, max_features=max_features)
    return float(np.mean(cos, dtype=np.float64))
