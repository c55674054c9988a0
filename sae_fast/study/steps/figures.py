"""PNG rendering of a matplotlib figure for the report steps of the calibrated analyses (nulls, dose-response,
ambiguity, seed count, calibration, verdict)."""

from __future__ import annotations

import io
from typing import Any


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
