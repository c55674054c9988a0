"""Report helpers of the calibrated-analysis steps (nulls, dose-response, ambiguity, FDR, seed count, calibration,
verdict): traceable tables, whose every cell is a results.json value and whose last column names the JSON path
it comes from (each header ends with its key in brackets), and PNG figures.

The tables and their formatting are the report's own (:mod:`sae_fast.study.lookup`).
"""

from __future__ import annotations

import io
from typing import Any

from ..lookup import columns, format_cell, get_path

__all__ = ["columns", "format_cell", "get_path", "new_figure", "png"]


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (110 dpi, tight), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def new_figure(width: float = 6.0, height: float = 3.5, ncols: int = 1) -> tuple[Any, Any]:
    """A (figure, axes) pair on the non-interactive Agg backend (``ncols`` > 1: an array of side-by-side axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))
