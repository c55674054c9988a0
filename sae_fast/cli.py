"""The `sae-fast` command. Each subcommand lives in its own module of `sae_fast.commands`, which defines
`NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`; they are found automatically.

Errors a user can cause are printed as one line, ``sae-fast <command>: error: <message>``, and the command
exits with 2 for a usage error and 1 for a data error (see :func:`user_error`); ``--debug`` (before or after the
subcommand) shows the traceback instead. Anything else is a bug and keeps its traceback. Options named
``--theta`` and ``--eps`` are range-checked, and ``--device``/``--model-device`` checked to exist on this machine,
at parse time in every subcommand (:mod:`sae_fast.validate`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import commands, validate
from .checkpoint import CheckpointError
from .errors import SaeFastError, UsageError

_PACKAGE_DIR = Path(__file__).resolve().parent
# OSErrors that come from the user's files and machine, not from the code: one line, exit 1.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EEXIST,
                       errno.EISDIR, errno.ENOTDIR, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EIO}
# option name -> (the type it is declared with, its check): theta/eps are floats, devices strings.
_RANGE_CHECKS = {"theta": (float, validate.theta_arg), "eps": (float, validate.eps_arg),
                 "device": (str, validate.device_arg), "model_device": (str, validate.device_arg)}


def _command_modules() -> list:
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{commands.__name__}.{name}") for name in names]


def _add_range_checks(parser: argparse.ArgumentParser) -> None:
    """Give every option named in _RANGE_CHECKS (``--theta``, ``--eps`` floats; ``--device``, ``--model-device``)
    its check. (argparse has no public list of a parser's options: ``_actions`` is the documented-by-use one.)"""
    for action in parser._actions:
        declared, check = _RANGE_CHECKS.get(action.dest, (None, None))
        if check is not None and (action.type or str) is declared:
            action.type = check


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is what --help prints)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sae-fast",
        description="Seed dependence of TopK sparse autoencoders: train seeds, match them, study them.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        cmd = sub.add_parser(
            module.NAME, help=module.HELP, description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
        _add_range_checks(cmd)
        cmd.set_defaults(run_command=module.run)
    return parser


def _raised_by_package(exc: BaseException) -> bool:
    """Whether the innermost frame that raised ``exc`` is sae_fast's own code (a deliberate check)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def user_error(exc: BaseException) -> int | None:
    """The exit status for an error the user caused (2: usage, 1: data), or None for a bug.

    User errors are: sae_fast's own error classes (:class:`~sae_fast.errors.SaeFastError`, CheckpointError);
    a ValueError raised by a check in sae_fast's code (a value out of range: usage); an OSError about the
    user's files or machine (missing file, permissions, full or read-only disk: data); an ImportError that
    sae_fast re-raised with an install hint. A ValueError, KeyError, TypeError or ImportError raised inside
    another library, or a KeyError anywhere, is a bug: the traceback is kept.
    """
    if isinstance(exc, SaeFastError):
        return exc.exit_code
    if isinstance(exc, CheckpointError):
        return 1
    if isinstance(exc, OSError):
        return 1 if exc.errno in _ENVIRONMENT_ERRNOS or (exc.errno is None and _raised_by_package(exc)) else None
    if isinstance(exc, ValueError) and _raised_by_package(exc):
        return UsageError.exit_code
    if isinstance(exc, ImportError) and exc.__cause__ is not None and _raised_by_package(exc):
        return 1
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sae-fast argv``; returns the exit status, or raises SystemExit for an error (printed on stderr)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.run_command(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"sae-fast {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        status = user_error(exc)
        if status is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"sae-fast {args.command}: error: {_message(exc)}", file=sys.stderr)
        raise SystemExit(status) from None


if __name__ == "__main__":
    sys.exit(main())
