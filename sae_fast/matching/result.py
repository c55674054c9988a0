"""The result of a matching: top-k indices and float32 cosines in one or both directions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Match:
    """Top-k matches between the rows of A and the rows of B.

    index_ab: (F_A, k) int64, for row i of A the rows of B with the k largest cosines, best first
        (-1 where an approximate index returned fewer than k results).
    cos_ab: (F_A, k) float32, those cosines computed in float32 (|cos| when ``absolute``; -inf where index is -1).
    index_ba, cos_ba: (F_B, k), the same from B to A; None unless ``both=True``.
    backend: what ran, in words (e.g. ``"exact: torch float32 tiles 1024x16384 on cpu"``).
    info: numbers about the run: ``seconds``, ``rescored_rows`` (rows recomputed in float32), ``flop`` ...
    """

    index_ab: torch.Tensor
    cos_ab: torch.Tensor
    index_ba: torch.Tensor | None
    cos_ba: torch.Tensor | None
    backend: str
    absolute: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def best_ab(self) -> torch.Tensor:
        """(F_A,) best cosine of each row of A in B."""
        return self.cos_ab[:, 0]

    @property
    def best_ba(self) -> torch.Tensor:
        """(F_B,) best cosine of each row of B in A (needs ``both=True``)."""
        if self.cos_ba is None:
            raise ValueError("this Match was computed with both=False; call match(..., both=True)")
        return self.cos_ba[:, 0]

    def mutual(self, theta: float | None = None) -> torch.Tensor:
        """(F_A,) bool: row i of A and its best row j of B are each other's nearest neighbour (and, when
        ``theta`` is given, their cosine is >= theta). Needs ``both=True``. A 1:1 partial matching."""
        if self.index_ba is None:
            raise ValueError("mutual nearest neighbours need both directions; call match(..., both=True)")
        j = self.index_ab[:, 0]
        ok = j >= 0
        back = torch.full_like(j, -1)
        back[ok] = self.index_ba[j[ok], 0]
        out = ok & (back == torch.arange(j.numel()))
        if theta is not None:
            out &= self.cos_ab[:, 0] >= theta
        return out
