"""Report helpers of the calibrated-analysis steps (nulls, dose-response, ambiguity, FDR, seed count, calibration,
verdict): traceable tables, whose every cell is a results.json value and whose last column names the JSON path
it comes from (each header ends with its key in brackets), and PNG figures.

The formatting matches the report's own tables (4 significant digits, "–" for a stored null).
"""

from __future__ import annotations

import html
import io
import math
from typing import Any


def lookup(results: dict, path: str) -> Any:
    """The value at a dotted results.json path (list items by index), or None."""
    cur: Any = results
    for key in path.split("."):
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        else:
            return None
    return cur


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: ints and bools as they are, floats to ``digits`` significant digits, lists as their first 12 items,
    None and non-finite floats as "–"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, list):
        return ", ".join(map(str, value[:12])) + (f", … ({len(value)})" if len(value) > 12 else "")
    return html.escape(str(value))


def columns(results: dict, prefixes: list[str], cols: list[tuple[str, str]]) -> tuple[str, Any]:
    """A report table: one row per JSON prefix, one column per (header, key) holding the value at prefix.key."""
    header = [*(f"{h} [{k}]" for h, k in cols), "source (results.json)"]
    return ("table", (header, [[*(fmt(lookup(results, f"{p}.{k}")) for _, k in cols), p] for p in prefixes]))


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (110 dpi, tight), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def new_figure(width: float = 6.0, height: float = 3.5) -> tuple[Any, Any]:
    """A (figure, axes) pair on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))
