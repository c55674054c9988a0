"""Tests of sae_fast.runs: finding saved SAEs in every layout (symbolic links followed), the format registry,
and reading decoders memory-mapped and verified (a changed weight, a truncated or foreign file is named)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_fast import TopKSAE, find_saved_saes, load_decoder, register_format
from sae_fast.checkpoint import CheckpointError, save_sae
from sae_fast.errors import DataError
from sae_fast.provenance import HASH_CHUNK
from sae_fast.runs import (
    MissingInputError,
    decoder_identity,
    read_safetensors_header,
    unregister_format,
    verify_safetensors,
)


def _sae(f: int = 24, d: int = 8, seed: int = 0) -> TopKSAE:
    return TopKSAE(d, f, 3, seed=seed)


def _save_plain(folder: Path, w: torch.Tensor, name: str = "sae.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_dec": w.contiguous()}, str(folder / name))  # no embedded digest
    return folder / name


def change_one_weight(file: Path, row: int = 5, col: int = 1) -> None:
    """Adds 1 to W_dec[row, col] in place, keeping the header (and its stored SHA-256) as it was."""
    header, start = read_safetensors_header(file)
    entry = header["W_dec"]
    d = int(entry["shape"][1])
    at = start + int(entry["data_offsets"][0]) + 4 * (row * d + col)
    data = bytearray(file.read_bytes())
    value = np.frombuffer(bytes(data[at:at + 4]), dtype=np.float32)[0] + np.float32(1)
    data[at:at + 4] = np.float32(value).tobytes()
    file.write_bytes(bytes(data))


def test_layouts_are_found_in_natural_order(tmp_path: Path) -> None:
    w = torch.randn(16, 4)
    for s in (10, 2, 1):
        _save_plain(tmp_path / "flat" / f"seed{s}", w)
    assert [n for n, _ in find_saved_saes(tmp_path / "flat")] == ["seed1", "seed2", "seed10"]
    for s in (0, 1):  # sparsify: one folder per hookpoint, seeds below it, and the other way round
        _save_plain(tmp_path / "hook_first" / "layers.3" / f"seed{s}", w)
        _save_plain(tmp_path / "hook_first" / "layers.4" / f"seed{s}", w)
        _save_plain(tmp_path / "seed_first" / f"seed{s}" / "layers.3", w)
    with pytest.raises(DataError, match=r"several hookpoints \['layers.3', 'layers.4'\]"):
        find_saved_saes(tmp_path / "hook_first")
    assert [n for n, _ in find_saved_saes(tmp_path / "hook_first", "layers.4")] == ["layers.4/seed0",
                                                                                    "layers.4/seed1"]
    assert [n for n, _ in find_saved_saes(tmp_path / "seed_first")] == ["seed0/layers.3", "seed1/layers.3"]
    _save_plain(tmp_path / "lens" / "run_a", w, "sae_weights.safetensors")
    _save_plain(tmp_path / "lens" / "run_b", w, "sae_weights.safetensors")
    found = find_saved_saes(tmp_path / "lens")
    assert [(n, f.name) for n, f in found] == [("run_a", "sae_weights.safetensors"),
                                               ("run_b", "sae_weights.safetensors")]
    with pytest.raises(MissingInputError, match="does not exist"):
        find_saved_saes(tmp_path / "missing")
    (tmp_path / "acts.npy").write_bytes(b"x")  # a file given where the folder of seeds goes
    with pytest.raises(DataError, match=r"acts\.npy is a file, not a folder of saved SAEs"):
        find_saved_saes(tmp_path / "acts.npy")


def test_symbolic_links_to_seed_folders_are_followed(tmp_path: Path) -> None:
    store, run = tmp_path / "store", tmp_path / "run"
    for s in range(3):
        _save_plain(store / f"trained{s}", torch.randn(16, 4))
    run.mkdir()
    for s in range(3):
        os.symlink(store / f"trained{s}", run / f"seed{s}", target_is_directory=True)
    os.symlink(run, run / "seed0" / "loop", target_is_directory=True)  # a cycle: visited once, then stopped
    found = find_saved_saes(run)
    assert [n for n, _ in found] == ["seed0", "seed1", "seed2"]
    assert torch.equal(load_decoder(run / "seed1"), load_decoder(store / "trained1"))


def test_registered_format_is_found_and_read(tmp_path: Path) -> None:
    w = torch.randn(12, 5)
    for s in range(2):
        (tmp_path / f"seed{s}").mkdir()
        torch.save({"decoder.weight": w + s}, tmp_path / f"seed{s}" / "ae.pt")
    with pytest.raises(DataError, match="no saved SAEs"):
        find_saved_saes(tmp_path)
    register_format("dictionary_learning_test", lambda f: f.name == "ae.pt",
                    lambda f: torch.load(f, weights_only=True)["decoder.weight"])
    try:
        assert [n for n, _ in find_saved_saes(tmp_path)] == ["seed0", "seed1"]
        assert torch.equal(load_decoder(tmp_path / "seed1"), w + 1)
    finally:
        unregister_format("dictionary_learning_test")
    with pytest.raises(DataError, match="holds no saved SAE"):
        load_decoder(tmp_path / "seed1")


def test_load_decoder_verifies_the_embedded_digest(tmp_path: Path) -> None:
    sae = _sae()
    save_sae(sae, tmp_path / "s")
    file = tmp_path / "s" / "sae.safetensors"
    assert torch.equal(load_decoder(tmp_path / "s"), sae.W_dec.detach())
    assert verify_safetensors(file) is not None
    change_one_weight(file)
    with pytest.raises(CheckpointError, match=f"{file}.*SHA-256"):
        load_decoder(tmp_path / "s")
    assert load_decoder(tmp_path / "s", verify=False).shape == (24, 8)  # asked not to verify: read as it is


@pytest.mark.parametrize("content", [b"", b"\x05\x00", b"not a safetensors file at all, just text",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "])
def test_foreign_or_truncated_files_are_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sae.safetensors").write_bytes(content)
    with pytest.raises(DataError, match=str(tmp_path / "s" / "sae.safetensors")):
        load_decoder(tmp_path / "s")


def test_truncated_data_is_named(tmp_path: Path) -> None:
    save_sae(_sae(), tmp_path / "s")
    file = tmp_path / "s" / "sae.safetensors"
    file.write_bytes(file.read_bytes()[:-16])
    with pytest.raises(DataError, match=f"{file} is truncated"):
        load_decoder(file)


def test_decoders_are_validated(tmp_path: Path) -> None:
    bad = np.ones((6, 3), dtype=np.float32)
    bad[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"nan\.npy.*NaN or inf.*row 4"):
        load_decoder(tmp_path / "nan.npy")
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"cube\.npy must hold a 2-D"):
        load_decoder(tmp_path / "cube.npy")
    save_file({"W_dec": torch.ones(4, 3, dtype=torch.int32)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(DataError, match="floating-point"):
        load_decoder(tmp_path / "int.safetensors")
    with pytest.raises(DataError, match="has no tensor 'W_enc'"):
        load_decoder(tmp_path / "int.safetensors", "W_enc")
    with pytest.raises(FileNotFoundError):
        load_decoder(tmp_path / "nope.npy")
    good = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "good.npy", good)
    dec = load_decoder(tmp_path / "good.npy")
    assert np.array_equal(dec.numpy(), good)
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the .npy file is mapped, not copied
        assert str((tmp_path / "good.npy").resolve()) in maps.read_text()


def test_identity_covers_every_row(tmp_path: Path) -> None:
    file = _save_plain(tmp_path / "s", torch.randn(64, 8))  # no embedded digest: the whole file is hashed
    before = decoder_identity(tmp_path / "s")
    change_one_weight(file, row=37)
    assert decoder_identity(tmp_path / "s") != before
    save_sae(_sae(), tmp_path / "t")  # embedded digest: verified, then used as the identity
    assert decoder_identity(tmp_path / "t").startswith("tensors:")


def test_verification_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Verifying streams the file: peak traced memory stays near one read chunk for files of 4 and 16 chunks."""
    peaks = []
    for rows in (2**14, 2**16):
        save_file({"W_dec": torch.randn(rows, 256)}, str(tmp_path / f"{rows}.safetensors"),
                  metadata={"sae_fast.sha256": "0" * 64})  # a wrong digest: the whole file is still read
        tracemalloc.start()
        with pytest.raises(DataError, match="SHA-256"):
            verify_safetensors(tmp_path / f"{rows}.safetensors")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert max(peaks) < 3 * HASH_CHUNK and peaks[1] < 1.5 * peaks[0] + HASH_CHUNK // 4
