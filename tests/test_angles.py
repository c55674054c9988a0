"""Principal angles: accuracy against 50-digit mpmath references, rank deficiency, batching, bad input."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import subspace_angles

from sae_fast import principal_angles, principal_angles_pairs, random_subspace_angles, subspace_similarity
from sae_fast.angles import principal_angles_torch

mpmath.mp.dps = 50
TOL = 1e-12  # radians, absolute, the accuracy promised for every angle in [1e-10, pi/2]


def _reflect(x: np.ndarray, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    """Applies `count` random Householder reflections to the rows of x (an orthogonal change of basis)."""
    for _ in range(count):
        v = rng.standard_normal(x.shape[0])
        v /= np.linalg.norm(v)
        x = x - 2.0 * np.outer(v, v @ x)
    return x


def _planted(d: int, angles: np.ndarray, extra_a: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Bases A (d, m + extra_a) and B (d, m) whose principal angles are known to 50 digits.

    Before rotation, A = [e_1..e_{m+extra}] and column i of B = fl(cos t_i) e_i + fl(sin t_i) e_{m+extra+i}:
    the exact angles of these float64 matrices are atan2(fl(sin t_i), fl(cos t_i)), evaluated in mpmath.
    A random orthogonal rotation and a well-conditioned column mixing change them by O(eps) only.
    """
    m = len(angles)
    p = m + extra_a
    assert p + m <= d
    a = np.zeros((d, p))
    a[np.arange(p), np.arange(p)] = 1.0
    b = np.zeros((d, m))
    cos, sin = np.cos(angles), np.sin(angles)
    b[np.arange(m), np.arange(m)] = cos
    b[p + np.arange(m), np.arange(m)] = sin
    exact = sorted(mpmath.atan2(mpmath.mpf(float(s)), mpmath.mpf(float(c))) for c, s in zip(cos, sin))
    rot = _reflect(np.concatenate([a, b], axis=1), rng)
    a, b = rot[:, :p], rot[:, p:]
    a = a @ (np.eye(p) + 0.3 * rng.standard_normal((p, p)) / math.sqrt(p))  # not orthonormal any more
    b = b @ (np.eye(m) + 0.3 * rng.standard_normal((m, m)) / math.sqrt(m))
    return a, b, exact


def _max_error(got: np.ndarray, exact: list) -> float:
    return max(abs(mpmath.mpf(float(g)) - e) for g, e in zip(got, exact))


MIXED = np.array([1e-10, 3e-10, 1e-8, 1e-6, 1e-3, 0.1, 0.5, math.pi / 4 - 1e-9, math.pi / 4 + 1e-9, 1.0, 1.5,
                  math.pi / 2 - 1e-7, math.pi / 2])


@pytest.mark.parametrize("extra_a", [0, 5])
def test_mixed_spectrum_small_d(extra_a: int) -> None:
    rng = np.random.default_rng(1)
    a, b, exact = _planted(40, rng.permutation(MIXED), extra_a, rng)
    got = principal_angles(a, b)
    assert got.shape == (len(MIXED),)
    assert np.all(np.diff(got) >= 0)
    assert _max_error(got, exact) <= TOL
    assert _max_error(principal_angles(b, a), exact) <= TOL  # symmetric in its arguments


def test_large_d_and_rank() -> None:
    """d = 4096, rank 256, angles log-spaced over [1e-10, pi/2] with tiny and large ones interleaved."""
    rng = np.random.default_rng(2)
    angles = np.concatenate([np.logspace(-10, math.log10(math.pi / 2), 255), [math.pi / 2]])
    a, b, exact = _planted(4096, rng.permutation(angles), 0, rng)
    got = principal_angles(a, b)
    assert got.shape == (256,)
    assert _max_error(got, exact) <= TOL


@pytest.mark.parametrize(("d", "m"), [(40, 8), (2048, 256)])
def test_no_small_angle_regime(d: int, m: int) -> None:
    """Every angle >= 0.05 rad: the cosines alone decide (no residual), still within the tolerance."""
    rng = np.random.default_rng(12)
    angles = np.concatenate([[0.0501, 0.051, 0.06], np.linspace(0.05, math.pi / 2, m - 3)])
    a, b, exact = _planted(d, rng.permutation(angles), 0, rng)
    assert _max_error(principal_angles(a, b), exact) <= TOL


def test_against_mpmath_full_algorithm() -> None:
    """Random non-orthonormal bases, reference: the whole computation in 50-digit mpmath."""
    rng = np.random.default_rng(3)
    d, p, q = 9, 3, 4
    a = rng.standard_normal((d, p))
    b = np.concatenate([a[:, :2] + 1e-7 * rng.standard_normal((d, 2)), rng.standard_normal((d, 2))], axis=1)

    def orth(x: np.ndarray) -> mpmath.matrix:
        qm, _ = mpmath.qr(mpmath.matrix(x.tolist()))
        return qm[:, : x.shape[1]]

    qa, qb = orth(a), orth(b)
    cos = sorted(mpmath.svd_r(qa.T * qb, compute_uv=False), reverse=True)
    exact = sorted(mpmath.acos(min(c, 1)) for c in cos[: min(p, q)])
    # acos at 50 digits is still accurate to ~25 digits for the smallest angle (~1e-7)
    assert _max_error(principal_angles(a, b), exact) <= TOL


def test_scipy_mixed_spectrum_defect_is_absent() -> None:
    """scipy 1.17 returns (1.5, 0.0) for exact angles (1.5, 1e-9); we must return 1e-9."""
    d = 6
    a = np.zeros((d, 2))
    a[0, 0] = a[1, 1] = 1.0
    b = np.zeros((d, 2))
    b[0, 0], b[2, 0] = math.cos(1.5), math.sin(1.5)
    b[1, 1], b[3, 1] = math.cos(1e-9), math.sin(1e-9)
    got = principal_angles(a, b)
    assert abs(got[0] - 1e-9) < 1e-20 and abs(got[1] - 1.5) < 1e-15


def test_agrees_with_scipy_where_scipy_is_right() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 7))
        np.testing.assert_allclose(principal_angles(a, b), np.sort(subspace_angles(a, b)), atol=1e-12)


def test_float32_is_promoted_not_computed_in_float32() -> None:
    rng = np.random.default_rng(5)
    a, b, _ = _planted(20, np.array([1e-6, 0.3, 1.2]), 0, rng)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(principal_angles(a32, b32), principal_angles(a32.astype(np.float64),
                                                                                b32.astype(np.float64)))
    assert principal_angles(a32, b32).dtype == np.float64


def test_batched_with_broadcasting() -> None:
    rng = np.random.default_rng(6)
    a = rng.standard_normal((3, 1, 25, 4))
    b = rng.standard_normal((1, 5, 25, 6))
    got = principal_angles(a, b)
    assert got.shape == (3, 5, 4)
    for i in range(3):
        for j in range(5):
            np.testing.assert_allclose(got[i, j], principal_angles(a[i, 0], b[0, j]), atol=1e-14)


def test_rank_deficient_never_nan() -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((30, 3))
    a = np.concatenate([base, base[:, :1] * 2.0, np.zeros((30, 1))], axis=1)  # rank 3 of 5 columns
    b = np.concatenate([base[:, 1:], rng.standard_normal((30, 3))], axis=1)  # rank 5, shares 2 directions
    got = principal_angles(a, b)
    assert got.shape == (5,)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:2], 0.0, atol=1e-12)
    assert got[-1] == pytest.approx(math.pi / 2)  # the angle a rank-3 span cannot have
    np.testing.assert_allclose(got[:3], principal_angles(base, b)[:3], atol=1e-12)
    zero = principal_angles(np.zeros((30, 2)), b)
    np.testing.assert_array_equal(zero, np.full(2, math.pi / 2))


def test_torch_in_torch_out_and_torch_path_matches() -> None:
    rng = np.random.default_rng(8)
    a, b, exact = _planted(50, rng.permutation(MIXED[:8]), 2, rng)
    out = principal_angles(torch.from_numpy(a), torch.from_numpy(b).float())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    # the batched torch implementation (the CUDA path), run here on CPU tensors
    t = principal_angles_torch(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy()
    assert _max_error(t, exact) <= TOL
    # rank-deficient batches in the torch path
    deficient = np.concatenate([a[:, :3], a[:, :1]], axis=1)
    np.testing.assert_allclose(
        principal_angles_torch(torch.from_numpy(deficient)[None], torch.from_numpy(b)[None])[0].numpy(),
        principal_angles(deficient, b), atol=1e-12)


def test_pairs_matches_single_calls_and_pads_with_nan() -> None:
    rng = np.random.default_rng(9)
    ranks = [2, 5, 3, 5, 1]
    bases = [rng.standard_normal((20, r)) for r in ranks]
    bases.append(np.concatenate([bases[1][:, :2], bases[1][:, :2]], axis=1))  # rank 2 of 4 columns
    pairs = np.array([(0, 1), (1, 3), (2, 4), (3, 3), (5, 1), (4, 0)])
    got = principal_angles_pairs(bases, pairs)
    assert got.shape == (len(pairs), 5)
    for row, (i, j) in zip(got, pairs):
        valid = min(bases[i].shape[1], bases[j].shape[1])
        np.testing.assert_allclose(row[:valid], principal_angles(bases[i], bases[j]), atol=1e-13)
        assert np.isnan(row[valid:]).all()
    torch_got = principal_angles_pairs([torch.from_numpy(b) for b in bases], torch.from_numpy(pairs))
    assert isinstance(torch_got, torch.Tensor)
    np.testing.assert_allclose(torch_got.numpy(), got, atol=0, equal_nan=True)
    from sae_fast.angles import _pairs_torch

    np.testing.assert_allclose(_pairs_torch([torch.from_numpy(b) for b in bases], torch.from_numpy(pairs)).numpy(),
                               got, atol=1e-12, equal_nan=True)
    assert principal_angles_pairs(bases, np.zeros((0, 2), dtype=np.int64)).shape == (0, 0)


def test_subspace_similarity_and_random_null() -> None:
    theta = np.array([[0.0, math.pi / 2, np.nan], [math.pi / 3, math.pi / 3, math.pi / 3]])
    sim = subspace_similarity(theta)
    np.testing.assert_allclose(sim.mean_cos2, [0.5, 0.25])
    np.testing.assert_allclose(sim.chordal_distance, [1.0, math.sqrt(3 * 0.75)])
    np.testing.assert_allclose(sim.largest_angle, [math.pi / 2, math.pi / 3])
    np.testing.assert_allclose(sim.projection_distance, [1.0, math.sin(math.pi / 3)])
    rng = np.random.default_rng(10)
    a = rng.standard_normal((12, 3))
    assert subspace_similarity(a, a).mean_cos2 == pytest.approx(1.0)
    null = random_subspace_angles(200, 8, 8, 300, seed=0)
    assert null.shape == (300, 8)
    # E[mean cos^2] between random r-subspaces of R^d is exactly r/d
    assert subspace_similarity(null).mean_cos2.mean() == pytest.approx(8 / 200, rel=0.05)
    np.testing.assert_array_equal(null, random_subspace_angles(200, 8, 8, 300, seed=0))


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 30), p=st.integers(1, 6), q=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_properties(d: int, p: int, q: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((d, p)), rng.standard_normal((d, q))
    got = principal_angles(a, b)
    assert got.shape == (min(p, q),)
    assert np.all(got >= 0) and np.all(got <= math.pi / 2 + 1e-15) and np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(principal_angles(b, a), got, atol=1e-12)
    mix = rng.standard_normal((p, p)) + 3 * np.eye(p)  # invertible: the same span
    np.testing.assert_allclose(principal_angles(a @ mix, b), got, atol=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (np.ones((5, 2)), np.ones((6, 2)), ValueError, "same ambient dimension"),
        (np.ones(5), np.ones((5, 2)), ValueError, "shape"),
        (np.full((5, 2), np.nan), np.ones((5, 2)), ValueError, "NaN or inf"),
        (np.ones((5, 2)), np.array([[np.inf], [1], [1], [1], [1]]), ValueError, "NaN or inf"),
        (np.ones((5, 0)), np.ones((5, 2)), ValueError, "empty"),
        (np.ones((5, 2), dtype=int), np.ones((5, 2)), TypeError, "floating-point"),
        (np.ones((2, 5, 2)), np.ones((3, 5, 2)), ValueError, "broadcast"),
    ],
)
def test_bad_input(a: np.ndarray, b: np.ndarray, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        principal_angles(a, b)


def test_pairs_bad_input() -> None:
    bases = [np.ones((5, 2)), np.eye(5)[:, :3]]
    with pytest.raises(ValueError, match="outside"):
        principal_angles_pairs(bases, np.array([[0, 2]]))
    with pytest.raises(ValueError, match="share d"):
        principal_angles_pairs([np.ones((5, 2)), np.ones((4, 2))], np.array([[0, 1]]))
    with pytest.raises(ValueError, match="2-D"):
        principal_angles_pairs([np.ones((2, 5, 2))], np.array([[0, 0]]))
    with pytest.raises(ValueError, match="non-empty"):
        principal_angles_pairs([], np.array([[0, 0]]))
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        principal_angles_pairs(bases, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        principal_angles_pairs(bases, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"bases\[1\] contains NaN"):
        principal_angles_pairs([np.ones((5, 2)), np.full((5, 2), np.nan)], np.array([[0, 1]]))


def test_missing_extension_error_says_how_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from sae_fast import _ext

    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_C" in fromlist:
            raise ImportError("simulated: not built")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install --no-build-isolation -e \."):
        _ext.extension()
    assert not _ext.has_extension()


@pytest.mark.gpu
def test_cuda_path_matches_cpu() -> None:
    rng = np.random.default_rng(11)
    a, b, exact = _planted(512, rng.permutation(MIXED), 3, rng)
    got = principal_angles(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
    assert got.is_cuda
    assert _max_error(got.cpu().numpy(), exact) <= TOL
    bases = [torch.randn(256, r, dtype=torch.float64, device="cuda") for r in (4, 8, 16)]
    pairs = torch.tensor([[0, 1], [1, 2], [2, 0]])
    np.testing.assert_allclose(principal_angles_pairs(bases, pairs).cpu().numpy(),
                               principal_angles_pairs([x.cpu().numpy() for x in bases], pairs.numpy()),
                               atol=1e-10, equal_nan=True)
