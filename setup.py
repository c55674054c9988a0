"""Builds the C++ extension `sae_fast._C` through CMake (pybind11 + Eigen).

Metadata lives in pyproject.toml; this file only adds the CMake-driven extension.
Environment switches:
  SAE_FAST_SKIP_EXTENSION=1  install without the extension (principal angles then need it built later)
  SAE_FAST_NATIVE=1          compile with -march=native (not portable to other CPUs)
  SAE_FAST_PORTABLE=1        baseline x86-64 code (default: AVX2+FMA where the building CPU has them)
  SAE_FAST_BUILD_JOBS=N      parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cmeel_prefix() -> str | None:
    """The `cmeel.prefix` folder of an installed cmeel-eigen wheel, if any is on sys.path."""
    for entry in sys.path:
        prefix = Path(entry) / "cmeel.prefix"
        if (prefix / "share" / "eigen3").is_dir():
            return str(prefix)
    return None


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _find_cmake()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DSAE_FAST_NATIVE={'ON' if os.environ.get('SAE_FAST_NATIVE') == '1' else 'OFF'}",
            f"-DSAE_FAST_PORTABLE={'ON' if os.environ.get('SAE_FAST_PORTABLE') == '1' else 'OFF'}",
        ]
        prefix = _cmeel_prefix()
        if prefix:
            args.append(f"-DCMAKE_PREFIX_PATH={prefix}")
        jobs = os.environ.get("SAE_FAST_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--config", "Release", "-j", jobs], check=True)


def _find_cmake() -> str:
    """The cmake of the `cmake` wheel when installed (build env), else the one on PATH."""
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except (ImportError, AttributeError):
        return "cmake"


ext_modules = [] if os.environ.get("SAE_FAST_SKIP_EXTENSION") == "1" else [CMakeExtension("sae_fast._C")]
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
