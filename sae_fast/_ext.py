"""Access to the compiled extension `sae_fast._C`, with an error that says how to build it."""

from __future__ import annotations

from types import ModuleType

_BUILD_HINT = (
    "the C++ extension sae_fast._C is not built. Build it with `pip install -e .` from a source checkout "
    "(needs a C++17 compiler; the build requirements come from PyPI), or offline with "
    "`pip install --no-build-isolation -e .` after installing setuptools, wheel, pybind11, cmeel-eigen "
    "(or the system's Eigen 3) and cmake>=3.18. Do not set SAE_FAST_SKIP_EXTENSION=1."
)


def extension() -> ModuleType:
    """The compiled module; raises ImportError with build instructions when it is missing."""
    try:
        from sae_fast import _C
    except ImportError as err:
        raise ImportError(_BUILD_HINT) from err
    return _C


def has_extension() -> bool:
    """Whether the compiled module can be imported."""
    try:
        extension()
    except ImportError:
        return False
    return True
