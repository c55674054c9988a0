"""The error classes a user can cause, and how the `sae-fast` command reports them.

Every expected failure (a bad argument, a file that is not what it should be, an output folder in use) raises
one of these, with a message that names the argument, file or field and what was expected. The command prints
that message on one line and exits with the class's `exit_code`; a traceback is shown only with `--debug`.
Both subclass ValueError, so Python callers that catch ValueError keep working.
"""

from __future__ import annotations


class SaeFastError(ValueError):
    """Base class of the errors a user can cause; `exit_code` is what the command exits with."""

    exit_code = 1


class UsageError(SaeFastError):
    """A bad argument or option value (exit 2, like argparse's own usage errors)."""

    exit_code = 2


class DataError(SaeFastError):
    """An input file or folder that is missing, corrupt, or not what it was expected to be (exit 1)."""

    exit_code = 1


class OutputDirError(SaeFastError):
    """An output folder that cannot be used: not writable, a file, in use by another run, or holding a
    finished result that would be overwritten (exit 1)."""

    exit_code = 1
