"""The on-disk cache: writing (checked finite, hashed as written, resumable) and reading (verified)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sae_fast.activations.base as act_base
import sae_fast.activations.writing as act_writing
from sae_fast.activations import (
    CachedSource,
    ModelSource,
    NonFiniteActivationsError,
    TensorSource,
    cache_activations,
    save_tensor_cache,
)
from sae_fast.errors import DataError
from sae_fast.provenance import sha256_file

from ._helpers import TEXTS, strip_hashes, take, x_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- disk cache


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tensor_cache_round_trip_and_same_batches(tmp_path: Path, dtype: str) -> None:
    x = x_rows(1000)
    cached = save_tensor_cache(x, tmp_path / "c", dtype=dtype, shard_tokens=300)  # 4 shards
    assert len(list((tmp_path / "c").glob("shard_*.npy"))) == 4
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (manifest["num_tokens"], manifest["d_in"], manifest["dtype"]) == (1000, 6, dtype)
    expect = x.to(act_base.DTYPES[dtype])
    reopened = CachedSource(tmp_path / "c")
    assert torch.equal(reopened.read(), expect)
    # slice semantics: a stop past the end reads to the end, an empty range is (0, d)
    assert torch.equal(reopened.read(250, 5000), expect[250:])
    assert reopened.read(700, 700).shape == (0, 6) and reopened.read(2000).dtype == expect.dtype
    with pytest.raises(ValueError, match="start"):
        reopened.read(-1)
    assert isinstance(reopened._shards[0], np.memmap)
    ref = take(TensorSource(expect, check=False), 12, batch_size=128, seed=7, start=2)
    got = take(reopened, 12, batch_size=128, seed=7, start=2)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert cached.describe()["num_tokens"] == 1000


def test_cache_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        CachedSource(tmp_path)
    save_tensor_cache(x_rows(100), tmp_path / "c", shard_tokens=40)
    (tmp_path / "c" / "shard_00001.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"shard_00001\.npy is missing or corrupt"):
        CachedSource(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest .* is corrupt"):
        CachedSource(tmp_path / "c")


# ---------------------------------------------------------------------------------------------- identity


def test_manifest_records_each_shards_size_and_hash_as_written(tmp_path: Path) -> None:
    cached = save_tensor_cache(x_rows(100), tmp_path / "c", shard_tokens=40)
    shards = cached.manifest["shards"]
    assert [s["rows"] for s in shards] == [40, 40, 20] and cached.manifest["finite"] is True
    for shard in shards:
        file = tmp_path / "c" / shard["file"]
        assert shard["bytes"] == file.stat().st_size and shard["sha256"] == sha256_file(file)
    assert cached.verify() == {"shards": 3, "sha256_checked": 3, "finite_scanned": 0}


def test_a_changed_or_truncated_shard_is_named(tmp_path: Path) -> None:
    save_tensor_cache(x_rows(100), tmp_path / "c", shard_tokens=40)
    shard = tmp_path / "c" / "shard_00001.npy"
    np.save(shard, np.load(shard) + 1)  # same shape and size: only the hash tells
    with pytest.raises(DataError, match=r"shard_00001\.npy was changed after caching"):
        CachedSource(tmp_path / "c").verify()
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"shard_00001\.npy is missing or corrupt: it has \d+ bytes, the manifest"):
        CachedSource(tmp_path / "c")


def test_another_cache_of_the_same_shape_has_another_fingerprint(tmp_path: Path) -> None:
    a = save_tensor_cache(x_rows(100), tmp_path / "a", shard_tokens=40)
    b = save_tensor_cache(x_rows(100).flip(0), tmp_path / "b", shard_tokens=40)
    assert a.describe() | {"path": None} == b.describe() | {"path": None}
    assert a.fingerprint() != b.fingerprint()
    a.check_same_data(a.fingerprint(), "the checkpoint")
    with pytest.raises(DataError, match=r"the checkpoint was made on other data: shard .*b/shard_00000\.npy"):
        b.check_same_data(a.fingerprint(), "the checkpoint")
    strip_hashes(tmp_path / "a")  # an older cache keeps its old fingerprint (its checkpoints still resume)
    old = CachedSource(tmp_path / "a")
    assert "shard_sha256" not in old.fingerprint()
    old.check_same_data(b.fingerprint(), "the checkpoint")  # nothing to compare shard by shard


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nan_is_reported_by_its_place_in_the_cache_when_written(tmp_path: Path, dtype: str) -> None:
    x = x_rows(100)
    x[57, 2] = float("nan") if dtype == "float32" else 1e6  # 1e6 overflows float16 to inf
    with pytest.raises(NonFiniteActivationsError,
                       match=r"cache shard .*shard_00001\.npy: row 17 \(row 57 of the cache\) holds NaN or inf"):
        save_tensor_cache(x, tmp_path / dtype, shard_tokens=40, dtype=dtype)
    assert not (tmp_path / dtype / "manifest.json").exists()


def test_an_older_cache_is_readable_and_scanned_for_nan(tmp_path: Path) -> None:
    x = x_rows(100)
    save_tensor_cache(x, tmp_path / "c", shard_tokens=40)
    strip_hashes(tmp_path / "c")
    assert CachedSource(tmp_path / "c").verify() == {"shards": 3, "sha256_checked": 0, "finite_scanned": 3}
    x[93, 0] = float("-inf")
    np.save(tmp_path / "c" / "shard_00002.npy", x[80:].numpy())
    cached = CachedSource(tmp_path / "c")
    assert torch.equal(cached.read(0, 80), x[:80])  # readable as before
    with pytest.raises(NonFiniteActivationsError, match=r"shard_00002\.npy: row 13 \(row 93 of the cache\)"):
        cached.verify()
    with pytest.raises(NonFiniteActivationsError, match=r"shard_00002\.npy: row 13 \(row 93 of the cache\)"):
        take(cached, 10, batch_size=20, seed=1)  # unverified, in training: still named by its place in the cache


def test_resumed_caching_hashes_and_checks_the_shards_already_written(tiny_bert, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, layer=2, text_batch_size=4)
    full = cache_activations(src, tmp_path / "full", texts_per_shard=4, progress=False)
    out = tmp_path / "resumed"
    real_write = act_writing._write_shard

    def stop_after_first(path, rows, dtype, first_row=0):
        if path.name != "shard_00000.npy":
            raise KeyboardInterrupt
        return real_write(path, rows, dtype, first_row)

    monkeypatch.setattr(act_writing, "_write_shard", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(src, out, texts_per_shard=4, progress=False)
    monkeypatch.setattr(act_writing, "_write_shard", real_write)
    resumed = cache_activations(src, out, texts_per_shard=4, progress=False)
    assert resumed.manifest["shards"] == full.manifest["shards"]
    assert resumed.verify()["sha256_checked"] == len(full.manifest["shards"])
