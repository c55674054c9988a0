"""Looking up and formatting values in a study's ``results.json`` by dotted path (``"a.b.0.c"``).

Shared by the report's tables and its figures. Memory: O(1) beyond the results dict.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from .typed import MissingResultError


def get_path(results: dict, path: str) -> Any:
    """The value at dotted ``path`` in ``results`` (list items by index), or None if any step is missing."""
    cur: Any = results
    for key in path.split("."):
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        else:
            return None
    return cur


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell for ``value``: "–" for None/non-finite, ``digits`` significant digits, strings escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return html.escape(str(value)) if isinstance(value, str) else str(value)


def has_path(results: dict, path: str) -> bool:
    """Whether ``path`` names a stored entry (its value may be null: a NaN in the study)."""
    head, _, last = path.rpartition(".")
    parent = get_path(results, head) if head else results
    if isinstance(parent, dict):
        return last in parent
    return isinstance(parent, list) and last.isdigit() and int(last) < len(parent)


def require(results: dict, path: str) -> Any:
    """The value at ``path`` (None for a stored null); a :class:`MissingResultError` naming the path when
    results.json has no such entry: a result the report asks for is never silently left out."""
    if not has_path(results, path):
        raise MissingResultError(f"results.json lacks `{path}`", path)
    return get_path(results, path)


def format_cell(value: Any, digits: int = 4) -> str:
    """:func:`format_value`, with a list shown as its first 12 items (and its length when longer)."""
    if isinstance(value, list):
        return ", ".join(map(str, value[:12])) + (f", … ({len(value)})" if len(value) > 12 else "")
    return format_value(value, digits)


def columns(results: dict, prefixes: list[str], cols: list[tuple[str, str]]) -> tuple[str, Any]:
    """A traceable report table: one row per JSON prefix, one column per (header, key) holding the value at
    ``prefix.key``; each header ends with its key in brackets and the last column names the prefix. A cell
    whose entry is absent raises :class:`MissingResultError` (a stored null shows as "–")."""
    header = (*[f"{h} [{k}]" for h, k in cols], "source (results.json)")
    return ("table", (header, [(*(format_cell(require(results, f"{p}.{k}")) for _, k in cols), p)
                               for p in prefixes]))
