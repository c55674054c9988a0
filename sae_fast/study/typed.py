"""Checking a step's results (JSON values) against the ``TypedDict`` that describes them.

:func:`check_typed` walks a value against a type: a ``TypedDict``'s required keys must be present and its fields
are followed (``NotRequired`` ones only when present), as are ``dict[str, X]`` values, ``list[X]`` items and the
variants of a union (``A | B``: the value must satisfy one of them; ``X | None``: None is allowed). Leaves (numbers,
strings, ``Any``) only need to be present: their types are not checked. Memory: O(depth) beyond the value.
"""

from __future__ import annotations

import types
import typing
from typing import Any, NotRequired, Required, Union, get_args, get_origin, get_type_hints, is_typeddict

from .step import StepError


class MissingResultError(StepError):
    """A result that a step, a check or the report needs is absent; ``path`` is its dotted JSON path."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Required`` / ``NotRequired`` / ``Annotated``."""
    while get_origin(tp) in (Required, NotRequired, typing.Annotated):
        tp = get_args(tp)[0]
    return tp


def _problems(value: Any, tp: Any, path: str) -> list[str]:
    """The dotted paths where ``value`` lacks what ``tp`` requires (empty: it conforms). A path ending in
    ``(not an object)`` / ``(not a list)`` names a value of the wrong shape."""
    tp = _unwrap(tp)
    origin = get_origin(tp)
    if is_typeddict(tp):
        return _typeddict_problems(value, tp, path)
    if origin in (Union, types.UnionType):
        return _union_problems(value, get_args(tp), path)
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path} (not an object)"]
        return [p for key, item in value.items() for p in _problems(item, get_args(tp)[1], _join(path, key))]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path} (not a list)"]
        return [p for i, item in enumerate(value) for p in _problems(item, get_args(tp)[0], _join(path, i))]
    return []  # a leaf: present is enough


def _typeddict_problems(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path} (not an object)"]
    missing = [_join(path, key) for key in _required(tp) if key not in value]
    if missing:
        return missing
    return [p for key, (hint, _) in _fields(tp).items() if key in value
            for p in _problems(value[key], hint, _join(path, key))]


def _fields(td: Any) -> dict[str, tuple[Any, bool]]:
    """Each field of the ``TypedDict`` ``td``: its type and whether it is required. ``__required_keys__`` alone is
    not enough: under ``from __future__ import annotations`` Python 3.11 counts ``NotRequired`` fields in it."""
    hints = get_type_hints(td, include_extras=True)
    return {key: (hint, get_origin(hint) is Required or (get_origin(hint) is not NotRequired
                                                          and key in td.__required_keys__))
            for key, hint in hints.items()}


def _required(td: Any) -> list[str]:
    return sorted(key for key, (_, required) in _fields(td).items() if required)


def _match(value: dict, td: Any) -> int:
    """How well ``value`` fits the ``TypedDict`` ``td``: its required keys present minus those missing."""
    required = _required(td)
    present = sum(key in value for key in required)
    return present - (len(required) - present)


def _union_problems(value: Any, options: tuple[Any, ...], path: str) -> list[str]:
    """Conforming to one variant is enough; otherwise the problems of the variant that comes closest. An object
    against several ``TypedDict`` variants (e.g. a result and its ``skipped`` form) is checked against the one
    whose required keys it fits best (the first on a tie), so an incomplete result is not taken for another
    variant."""
    if value is None and type(None) in options:
        return []
    options = tuple(opt for opt in options if opt is not type(None))
    typed = [opt for opt in map(_unwrap, options) if is_typeddict(opt)]
    if isinstance(value, dict) and len(typed) > 1:
        options = (max(typed, key=lambda td: _match(value, td)),)
    found = [_problems(value, opt, path) for opt in options]
    if not found or any(not p for p in found):
        return []
    return min(found, key=len)


def check_typed(value: Any, td_type: Any, where: str, *, root: str = "", hint: str = "") -> None:
    """Raise :class:`MissingResultError` (a :class:`StepError`) naming ``where`` (e.g. the step) and the dotted
    JSON path (below ``root``) of the first part ``value`` lacks against ``td_type``; ``hint`` ends the message
    (what to do about it)."""
    problems = _problems(value, td_type, root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MissingResultError(f"{where}: the result lacks `{problems[0]}`{more}{hint}", problems[0])
