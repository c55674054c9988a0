"""Tests of sae_fast.stability: p_hat on seeds with planted stable/unstable features, resume, save/load,
saved-SAE directories, bad input, and the one-to-one variants (Hungarian, mutual NN, encoder+decoder, PW-MCC)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sae_fast.stability.sweeps as stab_run
from sae_fast import Stability, stability_scores
from sae_fast.stability import (
    STABLE,
    UNSTABLE,
    find_saved_saes,
)

F, D, S = 240, 48, 6


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def synthetic_seeds(num_seeds: int = S, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeds of F features: features 0..79 are shared by every seed (noisy copies, cos ~ 0.9 to the source),
    80..159 by the first half of the seeds only, 160..239 are fresh random directions in every seed.
    Each seed's rows are shuffled; returns (decoders, the permutation of each seed)."""
    g = torch.Generator().manual_seed(seed)
    shared = unit(torch.randn(160, D, generator=g))
    decs, perms = [], []
    for s in range(num_seeds):
        x = unit(torch.randn(F, D, generator=g))
        noisy = unit(shared + 0.25 * unit(torch.randn(160, D, generator=g)))
        x[:80] = noisy[:80]
        if s < num_seeds // 2:
            x[80:160] = noisy[80:160]
        perm = torch.randperm(F, generator=g)
        decs.append(x[perm] * (1 + torch.rand(F, 1, generator=g)))  # rows not unit-norm on purpose
        perms.append(perm)
    return decs, perms


def expected_p_hat(anchor: int, perm: torch.Tensor, num_seeds: int = S) -> torch.Tensor:
    """p_hat of anchor's rows (in its stored order) from the planted design."""
    orig = perm  # stored row r holds original feature perm[r]
    p = torch.zeros(F)
    p[orig < 80] = 1.0
    half = num_seeds // 2
    if anchor < half:  # the half-shared features exist in this anchor and in half - 1 other seeds
        p[(orig >= 80) & (orig < 160)] = (half - 1) / (num_seeds - 1)
    return p


@pytest.fixture(scope="module")
def seeds() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return synthetic_seeds()


@pytest.fixture(scope="module")
def reference(seeds) -> Stability:
    return stability_scores(seeds[0], stack=1, progress=False)  # one pair per sweep: the plain path


def test_planted_stable_and_unstable_features(seeds, reference: Stability) -> None:
    _decs, perms = seeds
    st = reference
    assert st.best_cos.shape == (S, S, F) and st.best_j.dtype == torch.int32 and st.complete
    assert bool(torch.isnan(st.best_cos[torch.arange(S), torch.arange(S)]).all())
    p = st.p_hat()
    for a in range(S):
        assert torch.allclose(p[a], expected_p_hat(a, perms[a]), atol=1e-6)
        lab = st.split(anchor=a)
        assert bool((lab[perms[a] < 80] == STABLE).all()) and bool((lab[perms[a] >= 160] == UNSTABLE).all())
        middle = lab[(perms[a] >= 80) & (perms[a] < 160)]
        assert bool((middle == (0 if a < S // 2 else UNSTABLE)).all())
    # best_j points at the planted partner for shared features
    inv1 = torch.argsort(perms[1])
    rows = (perms[0] < 80).nonzero().flatten()
    assert torch.equal(st.best_j[0, 1, rows].long(), inv1[perms[0][rows]])
    # any theta is free later: at theta = -1 everything matches
    assert bool((st.p_hat(theta=-1.0) == 1).all())
    assert st.summary()["stable"] == pytest.approx(80 / 240)
    assert st.summary()["unstable"] == pytest.approx((80 + 80 * (S - S // 2) / S) / 240)


def test_single_anchor_equals_row_of_all(seeds, reference: Stability) -> None:
    one = stability_scores(seeds[0], anchor=3, progress=False)
    assert one.anchors == [3] and one.best_cos.shape == (1, S, F)
    torch.testing.assert_close(one.best_cos[0], reference.best_cos[3], equal_nan=True)
    assert torch.equal(one.best_j[0], reference.best_j[3])
    assert torch.equal(one.p_hat(anchor=3), reference.p_hat(anchor=3))


def test_low_precision_tiles_give_the_same_evidence(seeds, reference: Stability) -> None:
    st = stability_scores(seeds[0], anchor=0, dtype=torch.bfloat16, progress=False)
    assert torch.equal(st.best_j[0], reference.best_j[0])
    torch.testing.assert_close(st.best_cos[0], reference.best_cos[0], equal_nan=True, atol=1e-6, rtol=0)
    assert "re-scored in float32" in st.backend


def test_faiss_backend_agrees(seeds, reference: Stability) -> None:
    pytest.importorskip("faiss")
    st = stability_scores(seeds[0], backend="faiss", progress=False)
    assert torch.equal(st.best_j, reference.best_j)
    torch.testing.assert_close(st.best_cos, reference.best_cos, equal_nan=True, atol=1e-6, rtol=0)
    assert st.backend.startswith("faiss IndexFlatIP")


def test_resume_after_interruption_is_identical(seeds, reference: Stability, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_match = stab_run.match_many

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_match(*args, **kwargs)

    monkeypatch.setattr(stab_run, "match_many", flaky)
    with pytest.raises(KeyboardInterrupt):
        stability_scores(seeds[0], out=tmp_path, progress=False, save_every=1e9, stack=1)
    partial = Stability.load(tmp_path)
    assert int(partial.done.sum()) == 6 and not partial.complete  # 3 unordered pairs, both directions each
    with pytest.raises(RuntimeError, match="incomplete"):
        partial.p_hat()
    calls.clear()
    monkeypatch.setattr(stab_run, "match_many", lambda *a, **k: (calls.append(1), real_match(*a, **k))[1])
    resumed = stability_scores(seeds[0], out=tmp_path, progress=False, stack=1)
    assert len(calls) == S * (S - 1) // 2 - 3  # one sweep per unordered pair: only the unfinished ones
    assert torch.equal(resumed.best_j, reference.best_j)
    torch.testing.assert_close(resumed.best_cos, reference.best_cos, equal_nan=True, atol=0, rtol=0)
    calls.clear()
    again = stability_scores(seeds[0], out=tmp_path, progress=False, theta=0.5)  # complete: nothing recomputed
    assert not calls and again.theta == 0.5
    with pytest.raises(ValueError, match="other settings"):
        stability_scores(seeds[0], out=tmp_path, progress=False, absolute=True)


def test_save_load_round_trip(reference: Stability, tmp_path: Path) -> None:
    reference.info["note"] = "x"
    reference.save(tmp_path / "run")
    back = Stability.load(tmp_path / "run")
    assert back.anchors == reference.anchors and back.seeds == reference.seeds and back.info["note"] == "x"
    assert (back.theta, back.eps, back.absolute, back.backend) == (0.7, 0.05, False, reference.backend)
    torch.testing.assert_close(back.best_cos, reference.best_cos, equal_nan=True, atol=0, rtol=0)
    assert torch.equal(back.best_j, reference.best_j) and torch.equal(back.done, reference.done)
    with pytest.raises(FileNotFoundError):
        Stability.load(tmp_path / "nothing")


def _write_seeds(root: Path, decs: list[torch.Tensor], layout: str, hookpoint: str | None = None) -> None:
    for s, w in enumerate(decs):
        folder = root / f"seed{s}" / (hookpoint or "")
        folder.mkdir(parents=True, exist_ok=True)
        if layout == "sparsify":
            save_file({"W_dec": w.contiguous(), "encoder.weight": w.clone(), "b_dec": torch.zeros(D)},
                      str(folder / "sae.safetensors"))
        else:
            save_file({"W_dec": w.contiguous(), "W_enc": w.T.clone().contiguous()},
                      str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("layout", ["sparsify", "saelens"])
def test_directory_of_saved_saes(seeds, reference: Stability, tmp_path: Path, layout: str) -> None:
    decs = [seeds[0][i] for i in range(S)]
    _write_seeds(tmp_path, decs[:S], layout)
    st = stability_scores(tmp_path, progress=False, cache_bytes=2 * F * D * 4)  # at most 2 seeds cached
    assert st.seeds == [f"seed{s}" for s in range(S)]
    assert torch.equal(st.best_j, reference.best_j)


def test_seed_folders_sort_naturally_and_hookpoints(tmp_path: Path) -> None:
    decs = [torch.randn(16, 8) for _ in range(11)]
    _write_seeds(tmp_path, decs, "sparsify")
    assert [n for n, _ in find_saved_saes(tmp_path)][:3] == ["seed0", "seed1", "seed2"]
    assert find_saved_saes(tmp_path)[-1][0] == "seed10"
    # a trainer's output: seed*/ plus checkpoints/step_*/seed*/ and a hidden temp folder below
    _write_seeds(tmp_path / "checkpoints" / "step_000000010", decs[:2], "sparsify")
    _write_seeds(tmp_path / ".tmp_step_000000020", decs[:2], "sparsify")
    assert len(find_saved_saes(tmp_path)) == 11
    other = tmp_path / "multi"
    _write_seeds(other, decs[:2], "sparsify", "layers.3")
    _write_seeds(other, decs[:2], "sparsify", "layers.4")
    with pytest.raises(ValueError, match="several hookpoints"):
        find_saved_saes(other)
    assert [n for n, _ in find_saved_saes(other, "layers.4")] == ["seed0/layers.4", "seed1/layers.4"]
    with pytest.raises(ValueError, match="no saved SAEs"):
        find_saved_saes(other, "layers.9")


def test_bad_input(tmp_path: Path) -> None:
    ok = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stability_scores([ok], progress=False)
    with pytest.raises(ValueError, match="same d"):
        stability_scores([ok, torch.randn(10, 5)], progress=False)
    with pytest.raises(ValueError, match="same number of features"):
        stability_scores([ok, torch.randn(11, 4)], progress=False)
    bad = ok.clone()
    bad[3, 1] = math.inf
    with pytest.raises(ValueError, match="seed 1 has 1 rows with NaN or inf \\(first: row 3\\)"):
        stability_scores([ok, bad], progress=False)
    zero = ok.clone()
    zero[7] = 0
    with pytest.raises(ValueError, match="zero rows"):
        stability_scores([zero, ok], progress=False)
    with pytest.raises(ValueError, match="anchor"):
        stability_scores([ok, ok], anchor=2, progress=False)
    with pytest.raises(ValueError, match="theta"):
        stability_scores([ok, ok], theta=1.5, progress=False)
    with pytest.raises(TypeError, match="decoders"):
        stability_scores(42, progress=False)
    with pytest.raises(ValueError, match="no saved SAEs"):
        stability_scores(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError):
        stability_scores(tmp_path / "missing", progress=False)


def test_absolute_option() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 32, generator=g)
    decs = [a, -a, a * 2]
    signed = stability_scores(decs, progress=False)
    both = stability_scores(decs, absolute=True, progress=False)
    assert bool((both.p_hat() == 1).all())
    assert torch.allclose(signed.p_hat()[0], torch.full((50,), 0.5))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_gpu_run_equals_cpu_run(seeds, reference: Stability, kernel: str) -> None:
    st = stability_scores(seeds[0], device="cuda", kernel=kernel, progress=False)
    assert torch.equal(st.best_j, reference.best_j)
    torch.testing.assert_close(st.best_cos, reference.best_cos, equal_nan=True, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stack", [1, 2, 5])
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_stacking_does_not_change_the_result(seeds, reference: Stability, stack: int, kernel: str) -> None:
    kw = {"dtype": torch.bfloat16, "kernel": "triton"} if kernel == "triton" else {}
    st = stability_scores(seeds[0], stack=stack, progress=False, **kw)
    assert torch.equal(st.best_j, reference.best_j) and torch.equal(st.done, reference.done)
    torch.testing.assert_close(st.best_cos, reference.best_cos, equal_nan=True, atol=1e-6, rtol=0)
    assert st.info["stack"] == stack
    assert torch.equal(stability_scores(seeds[0], stack=stack, progress=False, index="ivf", nprobe=3).best_j,
                       reference.best_j)  # faiss-only options are ignored by the exact backend, as by match()
    one = stability_scores(seeds[0], anchor=2, stack=stack, progress=False, **kw)
    assert torch.equal(one.best_j[0], reference.best_j[2])


_SIGTERM_SCRIPT = r"""
import sys, time, torch
import sae_fast.stability.sweeps as stab_run
real = stab_run.match_many
def slow(*args, **kwargs):
    out = real(*args, **kwargs)
    print("sweep", flush=True)
    time.sleep(0.5)
    return out
stab_run.match_many = slow
g = torch.Generator().manual_seed(0)
from sae_fast import stability_scores
stability_scores([torch.randn(64, 16, generator=g) for _ in range(4)], out=sys.argv[1], progress=False, stack=1,
                 save_every=1e9)
"""


def test_sigterm_checkpoints_and_the_run_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(2):  # two sweeps started: the first one is finished
            assert proc.stdout.readline().strip() == "sweep", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
        proc.communicate()
    partial = Stability.load(tmp_path)  # saved on SIGTERM although save_every was never reached
    assert 2 <= int(partial.done.sum()) < 12 and not partial.complete
    g = torch.Generator().manual_seed(0)
    decs = [torch.randn(64, 16, generator=g) for _ in range(4)]
    resumed = stability_scores(decs, out=tmp_path, progress=False)
    full = stability_scores(decs, progress=False, stack=1)
    assert resumed.complete and torch.equal(resumed.best_j, full.best_j)
    torch.testing.assert_close(resumed.best_cos, full.best_cos, equal_nan=True, atol=0, rtol=0)


def _small(num: int = 3, f: int = 64, d: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(f, d, generator=g) for _ in range(num)]


def test_resume_refuses_other_backend_index_or_decoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decs = _small()
    stability_scores(decs, out=tmp_path / "exact", progress=False, backend="exact")
    with pytest.raises(ValueError, match="backend: saved 'exact', requested 'faiss'"):
        stability_scores(decs, out=tmp_path / "exact", progress=False, backend="faiss")
    changed = [decs[0], decs[1] + 0.5, decs[2]]
    with pytest.raises(ValueError, match=r"decoders of seeds \['1'\] changed"):
        stability_scores(changed, out=tmp_path / "exact", progress=False)
    pytest.importorskip("faiss")
    real = stab_run.match

    def fail_second(*args, **kwargs):  # interrupt a faiss run after its first pair
        if fail_second.calls == 1:
            raise KeyboardInterrupt
        fail_second.calls += 1
        return real(*args, **kwargs)

    fail_second.calls = 0
    monkeypatch.setattr(stab_run, "match", fail_second)
    with pytest.raises(KeyboardInterrupt):
        stability_scores(decs, out=tmp_path / "ivf", progress=False, backend="faiss", index="ivf", nlist=2,
                         save_every=1e9)
    monkeypatch.setattr(stab_run, "match", real)
    with pytest.raises(ValueError, match="nlist: saved 2, requested 4"):
        stability_scores(decs, out=tmp_path / "ivf", progress=False, backend="faiss", index="ivf", nlist=4)
    with pytest.raises(ValueError, match="index: saved 'ivf', requested 'flat'"):
        stability_scores(decs, out=tmp_path / "ivf", progress=False, backend="faiss")
    st = stability_scores(decs, out=tmp_path / "ivf", progress=False)  # auto keeps the saved settings
    assert st.complete and st.info["settings"] == {"backend": "faiss", "d": 16, "index": "ivf", "nlist": 2}


def test_faiss_options_are_forwarded_and_unknown_ones_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    built: list[tuple[str, dict]] = []

    class Counting(stab_run.FaissIndex):
        def __init__(self, x, kind="flat", **kwargs):
            built.append((kind, kwargs))
            super().__init__(x, kind, **kwargs)

    monkeypatch.setattr(stab_run, "FaissIndex", Counting)
    st = stability_scores(_small(4), backend="faiss", index="hnsw", hnsw_m=8, ef_construction=20, ef_search=16,
                          progress=False)
    assert len(built) == 4  # anchor="all": one index per seed, reused by the 3 other anchors
    assert built[0] == ("hnsw", {"hnsw_m": 8, "ef_construction": 20, "ef_search": 16})
    assert "IndexHNSWFlat(M=8, efConstruction=20, efSearch=16)" in st.backend
    assert st.info["recall_rows_per_pair"] == 64 and 0.5 <= st.info["recall_at_1"] <= 1.0  # measured by default
    built.clear()
    st = stability_scores(_small(), backend="faiss", index="ivf", nlist=2, nprobe=1, recall_sample=0, progress=False)
    assert built[0][1] == {"nlist": 2, "nprobe": 1} and "recall_at_1" not in st.info
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['nprob'\\]"):
        stability_scores(_small(), backend="faiss", nprob=3, progress=False)


def test_auto_picks_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.matching as matching

    st = stability_scores(_small(), progress=False, device="cpu")
    assert st.info["settings"]["backend"] == "exact" and "flop <=" in st.info["picked_reason"]
    pytest.importorskip("faiss")
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 1e3)
    st = stability_scores(_small(), progress=False, device="cpu")
    assert st.info["settings"] == {"backend": "faiss", "d": 16, "index": "ivf"} and "IVF" in st.backend
    assert "faiss installed" in st.info["picked_reason"] and "recall_at_1" in st.info


def test_faiss_run_checkpoints_between_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    saves = []
    real = Stability.save
    monkeypatch.setattr(Stability, "save", lambda self, path: (saves.append(Path(path)), real(self, path))[1])
    stability_scores(_small(), backend="faiss", out=tmp_path, save_every=0, progress=False)
    assert len(saves) == 3 * 2 + 1  # after each of the 6 directed pairs (not only per index), then the result


