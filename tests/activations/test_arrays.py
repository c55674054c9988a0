"""Activations in memory (TensorSource) and in one .npy/.safetensors file (ArraySource)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sae_fast.activations.base as act_base
from sae_fast.activations import (
    CachedSource,
    NonFiniteActivationsError,
    TensorSource,
    open_activations_file,
    save_tensor_cache,
)
from sae_fast.errors import DataError

from ._helpers import strip_hashes, take, x_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- tensors


def test_tensor_source_epochs_are_seeded_permutations() -> None:
    x = x_rows(1000)
    src = TensorSource(x)
    batches = take(src, 9, batch_size=100, seed=3)  # 10 batches per epoch
    rows = torch.cat(batches)
    assert rows.shape == (900, 6)
    # Every row of the epoch is distinct and comes from x.
    assert torch.unique(rows, dim=0).shape[0] == 900
    assert torch.isin(rows[:, 0], x[:, 0]).all()
    again = take(src, 9, batch_size=100, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = take(src, 1, batch_size=100, seed=4)[0]
    assert not torch.equal(other, batches[0])
    # Epoch 1 is another permutation of the same rows.
    stream = take(src, 20, batch_size=100, seed=3)
    assert not torch.equal(torch.cat(stream[:10]), torch.cat(stream[10:]))
    assert torch.equal(torch.cat(stream[:10]).sort(dim=0).values, torch.cat(stream[10:]).sort(dim=0).values)


def test_start_skips_exactly_that_many_batches() -> None:
    src = TensorSource(x_rows(1000))
    stream = take(src, 25, batch_size=90, seed=1)  # 11 per epoch: crosses two epoch boundaries
    for start in (0, 5, 11, 13, 22):
        resumed = take(src, 25 - start, batch_size=90, seed=1, start=start)
        assert all(torch.equal(a, b) for a, b in zip(stream[start:], resumed)), start


def test_tensor_source_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        TensorSource(torch.zeros(5))
    with pytest.raises(TypeError, match="floating point"):
        TensorSource(torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        TensorSource(np.zeros((5, 3)))  # type: ignore[arg-type]
    x = x_rows(50)
    x[7, 2] = float("nan")
    x[9, 0] = float("inf")
    expected = r"1 NaN and 1 inf values in 2 of 50 rows \(first bad rows: \[7, 9\]"
    with pytest.raises(NonFiniteActivationsError, match=expected):
        TensorSource(x)
    src = TensorSource(x_rows(50))
    with pytest.raises(ValueError, match="larger than the source"):
        next(src.iter_batches(100))
    with pytest.raises(ValueError, match="batch_size"):
        next(src.iter_batches(0))


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_activations_file_is_memory_mapped_and_identified(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    x = x_rows(300)
    file = tmp_path / f"a{suffix}"
    np.save(file, x.numpy()) if suffix == ".npy" else save_file({"acts": x}, file)
    src = open_activations_file(file)
    assert isinstance(src.array, np.memmap) and src.num_tokens == 300 and src.d_in == 6
    ref = take(TensorSource(x), 5, batch_size=64, seed=2, start=3)
    assert all(torch.equal(a, b) for a, b in zip(ref, take(src, 5, batch_size=64, seed=2, start=3)))
    y = x.clone()
    y[0, 0] += 1
    other = tmp_path / f"b{suffix}"
    np.save(other, y.numpy()) if suffix == ".npy" else save_file({"acts": y}, other)
    assert open_activations_file(other).fingerprint() != src.fingerprint()


def test_activations_file_errors_name_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(DataError, match=r"a\.npy does not exist"):
        open_activations_file(tmp_path / "a.npy")
    np.save(tmp_path / "v.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(DataError, match=r"v\.npy holds shape \(5,\); expected \(N, d\)"):
        open_activations_file(tmp_path / "v.npy")
    np.save(tmp_path / "i.npy", np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(DataError, match=r"i\.npy holds int64; expected float32 or float16"):
        open_activations_file(tmp_path / "i.npy")
    x = x_rows(50)
    x[31, 1] = float("nan")
    save_file({"activations": x, "other": x.clone()}, tmp_path / "n.safetensors")
    with pytest.raises(NonFiniteActivationsError, match=r"activations file .*n\.safetensors: row 31 holds NaN"):
        open_activations_file(tmp_path / "n.safetensors")
    save_file({"p": x, "q": x.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(DataError, match=r"has no tensor 'activations' \(tensors: \['p', 'q'\]\)"):
        open_activations_file(tmp_path / "two.safetensors")
    cut = tmp_path / "cut.safetensors"
    save_file({"p": x_rows(50)}, cut)
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.safetensors is truncated or corrupt"):
        open_activations_file(cut)
    (tmp_path / "t.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"must be a \.npy or \.safetensors file"):
        open_activations_file(tmp_path / "t.txt")


def test_verify_and_file_scans_read_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory O(chunk), not O(shard): every piece checked is at most HASH_CHUNK bytes."""
    save_tensor_cache(x_rows(1000), tmp_path / "c", shard_tokens=500)
    strip_hashes(tmp_path / "c")
    np.save(tmp_path / "a.npy", x_rows(1000).numpy())
    seen: list[int] = []
    real = act_base.check_rows_finite
    monkeypatch.setattr(act_base, "HASH_CHUNK", 1200)  # 50 rows of 6 float32
    monkeypatch.setattr(act_base, "check_rows_finite", lambda t, *a: seen.append(t.shape[0]) or real(t, *a))
    CachedSource(tmp_path / "c").verify()
    open_activations_file(tmp_path / "a.npy")
    assert len(seen) == 40 and max(seen) == 50
