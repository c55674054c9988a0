"""Range checks of the values a user gives, shared by the command line and the Python API.

Each check returns the value (as the right type) or raises :class:`~sae_fast.errors.UsageError` naming the
argument, the value and the range expected, so that ``stability_scores(theta=5)``, ``Stability.split(eps=0.9)``
and ``sae-fast stability --theta 5`` all fail the same way before any work starts. The ``*_arg`` forms are
argparse ``type=`` functions: argparse then reports the same message as a usage error at parse time.

Memory and time: O(1).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import OutputDirError, UsageError
from .outdir import check_writable

THETA_RANGE = "[-1, 1]"
EPS_RANGE = "[0, 0.5)"


def _fail(name: str, text: str) -> UsageError:
    """The error '<name> <text>' (argparse types pass no name: argparse puts the option's name first)."""
    return UsageError(f"{name} {text}".strip())


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise _fail(name, f"must be a number, got {value!r}")
    try:
        return float(value)  # NaN and inf fail every range check below
    except (TypeError, ValueError):
        raise _fail(name, f"must be a number, got {value!r}") from None


def theta(value: Any, name: str = "theta") -> float:
    """A cosine threshold: a number in [-1, 1]."""
    x = _number(value, name)
    if not -1.0 <= x <= 1.0:
        raise _fail(name, f"must be a cosine threshold in {THETA_RANGE}, got {value!r}")
    return x


def eps(value: Any, name: str = "eps") -> float:
    """The endpoint split's margin: a number in [0, 0.5) (stable p >= 1 - eps, unstable p <= eps)."""
    x = _number(value, name)
    if not 0.0 <= x < 0.5:
        raise _fail(name, f"must be in {EPS_RANGE} (stable: p >= 1 - eps, unstable: p <= eps), got {value!r}")
    return x


def _int_at_least(value: Any, name: str, low: int, what: str) -> int:
    """``value`` as an int >= ``low`` (an int, or its decimal text), else UsageError '<name> must be <what>'."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(str(value), 10)
        except ValueError:
            raise _fail(name, f"must be {what}, got {value!r}") from None
        value = as_int
    if value < low:
        raise _fail(name, f"must be {what}, got {value}")
    return value


def positive_int(value: Any, name: str) -> int:
    """A size or count: an int > 0."""
    return _int_at_least(value, name, 1, "a positive integer")


def non_negative_int(value: Any, name: str) -> int:
    """An index or a count that may be 0: an int >= 0."""
    return _int_at_least(value, name, 0, "a non-negative integer")


def positive_float(value: Any, name: str) -> float:
    """A duration, rate or scale: a finite number > 0."""
    x = _number(value, name)
    if not 0 < x < math.inf:
        raise _fail(name, f"must be a positive number, got {value!r}")
    return x


def device(value: Any, name: str = "device") -> torch.device:
    """A torch device that exists here: a device string or ``torch.device`` ('cpu', 'cuda', 'cuda:1', ...),
    returned as ``torch.device``; 'cuda' needs CUDA to be available and an index below the visible count."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise _fail(name, f"must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise _fail(name, f"is {str(value)!r} but CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _fail(name, f"is {str(value)!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def _device_text(value: Any, name: str) -> str:
    """``device`` for argparse: the option's text, once checked."""
    device(value, name)
    return value


def output_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """A file about to be written: its folder is created and checked writable, an existing file must be a
    writable file (OutputDirError otherwise), before any work starts."""
    p = Path(path)
    if p.is_dir():
        raise OutputDirError(f"{what} {p} is a folder; expected a file name")
    check_writable(p.parent if str(p.parent) else ".", f"the folder of {what}")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputDirError(f"{what} {p} is not writable")
    return p


def _arg(check: Callable[[Any, str], Any], label: str) -> Callable[[str], Any]:
    """An argparse ``type=`` function: ``check(text)``, with a UsageError turned into argparse's own error."""

    def parse(text: str) -> Any:
        try:
            return check(text, label)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = check.__name__.lstrip("_")  # what argparse names in "invalid <type> value"
    return parse


theta_arg = _arg(theta, "theta")
eps_arg = _arg(eps, "eps")
positive_int_arg = _arg(positive_int, "")
non_negative_int_arg = _arg(non_negative_int, "")
positive_float_arg = _arg(positive_float, "")
device_arg = _arg(_device_text, "")
