"""The verdict table: one row per claim of the paper, this run's effect with its seed-bootstrap interval, the
null it is tested against, the paper's figure (method.md §8) and a verdict.

Rule (:func:`verdict`), for a claim that predicts the effect lies above (``direction=+1``) or below (−1) the null
value:

* **supported**: the interval excludes the null on the predicted side;
* **contradicted**: the interval excludes the null on the other side, or it includes the null although the test
  had power >= ``min_power`` to see the planted effect at this run's size and seed count (calibration);
* **underpowered**: the interval includes the null and the power is below ``min_power`` (or unknown).

A claim with a side condition (pooling: stabler *at equal EV*) carries the condition's failure in ``failed``;
such a row is **contradicted** whatever its interval says.

A claim whose effect was not measured in this run is listed as **not measured**; one measured on a single seed
(no interval over seeds) as **no seed interval**.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TypedDict

from ..errors import UsageError

SUPPORTED, CONTRADICTED, UNDERPOWERED = "supported", "contradicted", "underpowered"
NOT_MEASURED, NO_INTERVAL = "not measured", "no seed interval"

PAPER = {
    "function": "masking M stable latents costs far more EV than masking 4M unstable ones (no numbers; [S1])",
    "rare": "unstable latents fire less: ~0.18 % vs ~0.44 % of tokens (ratio ~0.41; [S1])",
    "rank": "ER/d 0.59–0.65 (unstable) vs 0.80–0.81 (stable) ([S1])",
    "geometry": "cross-seed logistic-regression F1 0.67–0.73 ([S1])",
    "subspaces": "unstable latents' subspaces reproduce across seeds (qualitative; [A])",
    "pooling": "pooling unique cross-seed features: more stable, EV preserved (qualitative; [A])",
}
"""The paper's figure per claim key, from method.md §8."""

CLAIMS = {
    "function": "stable latents carry the function",
    "rare": "unstable latents are rare (fire less often)",
    "rank": "unstable latents have lower effective rank",
    "geometry": "stability is predictable from decoder geometry",
    "subspaces": "unstable latents live in reproducible subspaces",
    "pooling": "pooling gives stabler SAEs at equal EV",
}


@dataclass
class ClaimRow:
    """One claim's measurement; ``direction`` is +1 when the paper predicts effect > null, −1 for below."""

    key: str
    metric: str
    effect: float
    lo: float
    hi: float
    null: float
    null_name: str
    direction: int = 1
    power: float = float("nan")
    failed: str = ""
    """a side condition of the claim that this run breaks (e.g. 'EV not preserved'); empty when none"""

    @property
    def claim(self) -> str:
        return CLAIMS.get(self.key, self.key)

    @property
    def paper(self) -> str:
        return PAPER.get(self.key, "")


def verdict(row: ClaimRow, *, min_power: float = 0.8) -> str:
    """The verdict of one row (module docstring)."""
    if row.direction not in (1, -1):
        raise UsageError(f"direction of claim {row.key!r} must be +1 or -1, got {row.direction}")
    if not math.isfinite(row.effect):
        return NOT_MEASURED
    if row.failed:
        return CONTRADICTED
    if not (math.isfinite(row.lo) and math.isfinite(row.hi)):
        return NO_INTERVAL
    above, below = row.lo > row.null, row.hi < row.null
    if (above and row.direction == 1) or (below and row.direction == -1):
        return SUPPORTED
    if above or below:
        return CONTRADICTED
    return CONTRADICTED if math.isfinite(row.power) and row.power >= min_power else UNDERPOWERED


class VerdictRow(TypedDict):
    """One claim of :func:`verdict_table` (a :class:`ClaimRow` with its claim, the paper's figure and the
    verdict); NaN numbers are stored as null."""

    key: str
    claim: str
    metric: str
    effect: float | None
    lo: float | None
    hi: float | None
    null: float | None
    null_name: str
    direction: int
    power: float | None
    failed: str
    paper: str
    verdict: str


def verdict_table(rows: list[ClaimRow], *, min_power: float = 0.8) -> list[VerdictRow]:
    """Rows as plain dicts with ``claim``, ``paper`` and ``verdict`` added, in the order of :data:`CLAIMS`
    (claims without a row appear as *not measured*)."""
    by_key = {r.key: r for r in rows}
    out = []
    for key in [*CLAIMS, *[r.key for r in rows if r.key not in CLAIMS]]:
        r = by_key.get(key)
        if r is None:
            r = ClaimRow(key, "", math.nan, math.nan, math.nan, math.nan, "", 1)
        out.append({**asdict(r), "claim": r.claim, "paper": r.paper, "verdict": verdict(r, min_power=min_power)})
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3g}"


def table_rows(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of strings for a report table."""
    header = ["claim", "this run (95 % CI)", "null", "power", "paper", "verdict"]
    rows = []
    for t in table:
        rows.append([t["claim"], f"{t['metric']}: {_fmt(t['effect'])} [{_fmt(t['lo'])}, {_fmt(t['hi'])}]",
                     f"{t['null_name']} = {_fmt(t['null'])}", _fmt(t["power"]), t["paper"], t["verdict"]])
    return header, rows


def markdown(table: list[dict]) -> str:
    """The verdict table as a Markdown table."""
    header, rows = table_rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
