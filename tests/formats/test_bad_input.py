"""Bad SAE folders get a DataError naming the file, the field and what was expected; never a silent reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast.checkpoint import CheckpointError, load_sae, save_sae
from sae_fast.errors import DataError
from sae_fast.formats import check_consistent, describe, detect, read_decoder
from sae_fast.sae import TopKSAE

D, F, K = 8, 24, 3


def _saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _weights(f: int = F, d: int = D) -> dict[str, torch.Tensor]:
    return {"W_enc": torch.randn(d, f), "b_enc": torch.randn(f), "W_dec": torch.randn(f, d), "b_dec": torch.randn(d)}


def test_checkpoint_errors_are_data_errors() -> None:
    assert issubclass(CheckpointError, DataError) and issubclass(CheckpointError, ValueError)


def test_unknown_architecture_names_the_field(tmp_path: Path) -> None:
    folder = _saelens(tmp_path / "s", {"architecture": "transcoder", "d_in": D, "d_sae": F}, _weights())
    with pytest.raises(CheckpointError, match=r"s/cfg.json: field 'architecture' is 'transcoder'"):
        load_sae(folder)
    with pytest.raises(CheckpointError, match="field 'architecture'"):
        read_decoder(folder)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    cfg = {"architecture": "topk", "d_in": D, "d_sae": F, "k": K}
    folder = _saelens(tmp_path / "s", cfg, {**_weights(), "threshold": torch.rand(F)})
    with pytest.raises(CheckpointError, match=r"holds tensors \['threshold'\] that .*'topk' does not use"):
        load_sae(folder)
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F}
    with pytest.raises(CheckpointError, match=r"lacks tensors \['threshold'\] that .*'jumprelu' needs"):
        load_sae(_saelens(tmp_path / "j", cfg, _weights()))


def test_cfg_sizes_that_contradict_the_weights_are_refused(tmp_path: Path) -> None:
    folder = _saelens(tmp_path / "s", {"architecture": "standard", "d_in": D, "d_sae": 2 * F}, _weights())
    with pytest.raises(CheckpointError, match=r"tensor 'W_enc' has shape \(8, 24\), .* implies \(8, 48\)"):
        load_sae(folder)
    with pytest.raises(CheckpointError, match=r"W_dec has shape \(24, 8\), .*cfg.json \(d_sae=48, d_in=8\)"):
        read_decoder(folder)


def test_a_file_that_is_not_what_its_name_says(tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "ae.pt").write_text("not a torch file")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderTopK", "k": K}}))
    with pytest.raises(CheckpointError, match=r"dl/ae.pt is not a torch state dict"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "SparseCoder"}}))
    with pytest.raises(CheckpointError, match=r"config.json: field 'trainer.dict_class' is 'SparseCoder'"):
        load_sae(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect(empty) is None
    with pytest.raises(CheckpointError, match="holds neither"):
        load_sae(empty)


def _sparsify(folder: Path, **cfg: object) -> Path:
    save_sae(TopKSAE(D, F, K, seed=0), folder)
    base = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return folder


def test_sparsify_skip_connections_and_transcoders_are_refused_but_their_decoder_is_read(tmp_path: Path) -> None:
    skip = _sparsify(tmp_path / "skip", skip_connection=True)
    with pytest.raises(CheckpointError, match=r"'topk_skip' sparse coder .*'skip_connection'"):
        load_sae(skip)
    transcoder = _sparsify(tmp_path / "tc", transcode=True)
    with pytest.raises(CheckpointError, match="'topk_transcoder' sparse coder"):
        load_sae(transcoder)
    assert read_decoder(transcoder).shape == (F, D) and describe(transcoder)[0] == "topk_transcoder"
    w_skip = _sparsify(tmp_path / "wskip")  # W_skip present while cfg.json says no skip connection
    tensors = load_file(w_skip / "sae.safetensors")
    save_file({**tensors, "W_skip": torch.zeros(D, D)}, w_skip / "sae.safetensors")
    with pytest.raises(CheckpointError, match=r"holds tensors \['W_skip'\]"):
        load_sae(w_skip)


def test_seeds_of_differing_architecture_or_size_are_named(tmp_path: Path) -> None:
    for s in range(2):
        save_sae(TopKSAE(D, F, K, seed=s), tmp_path / f"seed{s}")
    os.symlink(tmp_path / "seed1", tmp_path / "seed2")  # a seed folder may be a symbolic link
    seeds = [tmp_path / f"seed{s}" for s in range(3)]
    assert check_consistent(seeds) == ("topk", F, D)
    _saelens(tmp_path / "relu", {"architecture": "standard", "d_in": D, "d_sae": F}, _weights())
    save_sae(TopKSAE(D, 2 * F, K, seed=0), tmp_path / "wide")
    with pytest.raises(CheckpointError, match=r"seed0 is topk with F=24 d=8, but .*relu: relu F=24 d=8; "
                                              r".*wide: topk F=48 d=8"):
        check_consistent([*seeds, tmp_path / "relu", tmp_path / "wide"])
