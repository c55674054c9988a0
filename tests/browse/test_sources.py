"""Reading held-out activations for the browser and exports (sae_fast.browse.sources.ActivationBatches)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_fast.browse.sources import ActivationBatches
from sae_fast.errors import DataError, UsageError


def _rows(n: int = 300, d: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_max_rows_is_exact_when_it_is_not_a_multiple_of_the_batch(tmp_path) -> None:
    np.save(tmp_path / "a.npy", _rows())
    batches = list(ActivationBatches(tmp_path / "a.npy", 16, batch_size=64, max_rows=100))
    assert [b.shape[0] for b in batches] == [64, 36]  # not 64 + 64 rows read past max_rows
    assert torch.equal(torch.cat(batches), torch.from_numpy(_rows()[:100]))


def test_safetensors_is_memory_mapped_and_bfloat16_read_as_stored(tmp_path) -> None:
    x = torch.from_numpy(_rows()).to(torch.bfloat16)
    save_file({"activations": x, "labels": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
    src = ActivationBatches(tmp_path / "a.safetensors", 16, batch_size=128)
    assert isinstance(src.array, np.memmap)  # memory: one batch, whatever N
    assert torch.equal(torch.cat(list(src)), x.float())


def test_bad_files_and_options_are_named(tmp_path) -> None:
    np.save(tmp_path / "int.npy", np.ones((10, 16), dtype=np.int64))
    with pytest.raises(DataError, match=r"int\.npy holds int64; expected float32"):
        ActivationBatches(tmp_path / "int.npy", 16)
    np.save(tmp_path / "a.npy", _rows())
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(DataError, match=r"cut\.safetensors is not a readable \.safetensors file"):
        ActivationBatches(tmp_path / "cut.safetensors", 16)
    with pytest.raises(UsageError, match="--batch-size must be a positive integer, got 0"):
        ActivationBatches(tmp_path / "a.npy", 16, batch_size=0)
    with pytest.raises(UsageError, match="--max-rows must be a positive integer, got -3"):
        ActivationBatches(tmp_path / "a.npy", 16, max_rows=-3)
    with pytest.raises(DataError, match="is not a file"):
        ActivationBatches(tmp_path, 16)


def test_statistics_come_from_the_saes_the_stability_run_was_made_on(tmp_path) -> None:
    """--run pointing at other seeds gave another SAE's statistics (same F) or an index traceback (other F)."""
    from sae_fast.browse.sources import build_table
    from sae_fast.checkpoint import save_sae
    from sae_fast.sae import TopKSAE
    from sae_fast.stability import stability_scores

    for s in range(2):
        save_sae(TopKSAE(16, 32, 4, seed=s), tmp_path / "run" / f"seed{s}")
        save_sae(TopKSAE(16, 32, 4, seed=10 + s), tmp_path / "other" / f"seed{s}")  # same shape, other weights
        save_sae(TopKSAE(16, 64, 4, seed=s), tmp_path / "wide" / f"seed{s}")
    stability_scores(tmp_path / "run", out=tmp_path / "run" / "stability", progress=False)
    np.save(tmp_path / "a.npy", _rows())
    table = build_table(tmp_path / "run", activations=tmp_path / "a.npy")
    assert table.frequency.shape == (32,)
    for other in ("other", "wide"):
        with pytest.raises(DataError, match=rf"{other}/seed0 is not the SAE the stability run computed seed"):
            build_table(tmp_path / "run", run=tmp_path / other, activations=tmp_path / "a.npy")
    meta_file = tmp_path / "run" / "stability" / "stability.json"  # a run saved before decoder identities
    meta = json.loads(meta_file.read_text())
    del meta["info"]["decoder_ids"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"wide/seed0 holds an SAE of 64 latents; the stability run has 32"):
        build_table(tmp_path / "run", run=tmp_path / "wide", activations=tmp_path / "a.npy")
