"""`sae-fast angles`: principal angles between subspaces stored as .npy files, or a demo."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from ..validate import non_negative_int_arg

NAME = "angles"
HELP = "Principal angles between two subspaces (.npy bases of shape (d, r)), or --demo."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", nargs="?", help="first basis, a .npy file of shape (d, p)")
    parser.add_argument("b", nargs="?", help="second basis, a .npy file of shape (d, q)")
    parser.add_argument("--demo", action="store_true", help="run on built-in examples instead of files")
    parser.add_argument("--threads", type=non_negative_int_arg, default=0, help="C++ threads (0: all)")


def run(args: argparse.Namespace) -> int:
    from ..angles import principal_angles, subspace_similarity

    if args.demo:
        return _demo(args.threads)
    if not (args.a and args.b):
        raise UsageError("give two .npy files A and B, or --demo")
    a, b = load_basis(args.a, "A"), load_basis(args.b, "B")
    if a.shape[0] != b.shape[0]:
        raise DataError(f"A {args.a} has shape {a.shape} and B {args.b} has shape {b.shape}: both bases must have "
                        "the same number of rows d (shapes (d, p) and (d, q))")
    theta = principal_angles(a, b, num_threads=args.threads)
    sim = subspace_similarity(theta)
    print("angles (rad):", np.array2string(theta, precision=6))
    print(f"mean cos^2 {sim.mean_cos2:.6f}  chordal {sim.chordal_distance:.6f}  largest {sim.largest_angle:.6f}")
    return 0


def load_basis(path: str, name: str) -> np.ndarray:
    """A basis (d, r) of finite floats from a .npy file; DataError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{name} {p} does not exist" if not p.exists() else f"{name} {p} is not a file")
    try:
        array = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{name} {p} is not a readable .npy file: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{name} {p} must hold a 2-D array (d, r) with d, r > 0, got shape {np.shape(array)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{name} {p} must hold floats, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} {p} holds NaN or inf")
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _demo(threads: int) -> int:
    from scipy.linalg import subspace_angles

    from ..angles import principal_angles, principal_angles_pairs, random_subspace_angles, subspace_similarity

    # 1. A mixed spectrum that scipy gets wrong: exact angles (1.5, 1e-9).
    d = 8
    a = np.zeros((d, 2))
    a[0, 0] = a[1, 1] = 1.0
    b = np.zeros((d, 2))
    b[0, 0], b[2, 0] = np.cos(1.5), np.sin(1.5)
    b[1, 1], b[3, 1] = np.cos(1e-9), np.sin(1e-9)
    print("exact angles        : [1e-09, 1.5]")
    print("sae_fast            :", principal_angles(a, b, num_threads=threads))
    print("scipy subspace_angles:", np.sort(subspace_angles(a, b)))

    # 2. Many pairs of 16-dim subspaces in d = 768, against the random-subspace null.
    rng = np.random.default_rng(0)
    shared = np.linalg.qr(rng.standard_normal((768, 16)))[0]
    bases = [shared + 0.01 * rng.standard_normal((768, 16)) for _ in range(100)]
    pairs = np.array([(i, j) for i in range(100) for j in range(i + 1, 100)])
    t0 = time.perf_counter()
    theta = principal_angles_pairs(bases, pairs, num_threads=threads)
    elapsed = time.perf_counter() - t0
    null = random_subspace_angles(768, 16, 16, 200, seed=1)
    print(f"{len(pairs)} pairs of noisy copies of one 16-dim subspace of R^768 in {elapsed:.3f} s")
    print(f"  mean cos^2: pairs {subspace_similarity(theta).mean_cos2.mean():.4f}, "
          f"random null {subspace_similarity(null).mean_cos2.mean():.4f} (expected 16/768 = {16 / 768:.4f})")
    return 0
