"""dictionary_learning folders (ae.pt + config.json) written with the real dictionary-learning 0.1.0 classes load
in sae_fast with the same encode and decode outputs, for each class; sae_fast writes AutoEncoderTopK folders
that dictionary_learning reads back with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sae_fast.checkpoint import CheckpointError, load_sae, save_sae
from sae_fast.formats import SparseCoder, architecture_of, as_args, describe, read_decoder, to_sparse
from sae_fast.sae import TopKSAE

D, F, K = 8, 24, 3


def _make(dl: SimpleNamespace, dict_class: str) -> Any:
    d = dl.dictionary
    return {"AutoEncoder": lambda: d.AutoEncoder(D, F), "AutoEncoderNew": lambda: d.AutoEncoderNew(D, F),
            "GatedAutoEncoder": lambda: d.GatedAutoEncoder(D, F),
            "JumpReluAutoEncoder": lambda: d.JumpReluAutoEncoder(D, F),
            "AutoEncoderTopK": lambda: dl.top_k.AutoEncoderTopK(D, F, K),
            "BatchTopKSAE": lambda: dl.batch_top_k.BatchTopKSAE(D, F, K),
            "MatryoshkaBatchTopKSAE": lambda: dl.matryoshka.MatryoshkaBatchTopKSAE(D, F, K, [8, 16])}[dict_class]()


def _randomise(module: torch.nn.Module, seed: int, threshold: float | None) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            values = torch.randn(p.shape, generator=g) * (0.2 if name == "r_mag" else 1.0)
            p.copy_(values.abs() * 0.3 if name == "threshold" else values)
        if threshold is not None and "threshold" in dict(module.named_buffers()):
            module.threshold.fill_(threshold)


def _save(module: torch.nn.Module, folder: Path, dict_class: str, **trainer: Any) -> Path:
    folder.mkdir(parents=True)
    torch.save({k: v.cpu() for k, v in module.state_dict().items()}, folder / "ae.pt")
    config = {"trainer": {"dict_class": dict_class, "activation_dim": D, "dict_size": F, **trainer}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _x(n: int = 32) -> torch.Tensor:
    """Test inputs, the same whatever ran before (fp32 sums differ from theirs in the last bits only)."""
    return torch.randn(n, D, generator=torch.Generator().manual_seed(n)) * 2

def _assert_same_outputs(ours: Any, theirs: Any, x: torch.Tensor) -> None:
    with torch.no_grad():
        code = ours.encode(x)
        dense_theirs = theirs.encode(x)
        torch.testing.assert_close(to_sparse(code, ours.num_latents).to_dense(), dense_theirs, rtol=1e-4, atol=1e-4)
        assert int((dense_theirs != 0).sum()) > 0, "the test input activates nothing"
        torch.testing.assert_close(ours.decode(*as_args(code)), theirs.decode(dense_theirs), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.decode(*as_args(code)), theirs(x), rtol=1e-4, atol=1e-4)


CASES = [("AutoEncoder", None, "relu"), ("AutoEncoderNew", None, "relu"), ("GatedAutoEncoder", None, "gated"),
         ("JumpReluAutoEncoder", None, "jumprelu"), ("AutoEncoderTopK", None, "topk"),
         ("BatchTopKSAE", 0.8, "batchtopk"), ("BatchTopKSAE", -1.0, "batchtopk"),
         ("MatryoshkaBatchTopKSAE", 0.8, "matryoshka_batchtopk")]


@pytest.mark.parametrize(("dict_class", "threshold", "arch"), CASES, ids=[f"{c}-{t}" for c, t, _ in CASES])
def test_saved_by_dictionary_learning_loads_with_the_same_outputs(dictionary_learning: SimpleNamespace,
                                                                  tmp_path: Path, dict_class: str,
                                                                  threshold: float | None, arch: str) -> None:
    theirs = _make(dictionary_learning, dict_class)
    _randomise(theirs, seed=len(dict_class), threshold=threshold)
    trainer = {"k": K} if "TopK" in dict_class else {}
    folder = _save(theirs, tmp_path / "trainer_0", dict_class, **trainer)
    ours = load_sae(folder)
    assert isinstance(ours, SparseCoder) and architecture_of(ours) == arch
    assert isinstance(ours, TopKSAE) == (dict_class == "AutoEncoderTopK")
    assert describe(folder) == (arch, F, D)
    _assert_same_outputs(ours, theirs, _x())
    w_dec = theirs.W_dec if hasattr(theirs, "W_dec") else theirs.decoder.weight.T  # (d, F) in nn.Linear
    torch.testing.assert_close(read_decoder(folder), w_dec.detach())


def test_dictionary_learning_reads_what_sae_fast_writes(dictionary_learning: SimpleNamespace,
                                                        tmp_path: Path) -> None:
    ours = TopKSAE(D, F, K, seed=2)
    with torch.no_grad():
        ours.b_enc.normal_()
        ours.b_dec.normal_()
    save_sae(ours, tmp_path / "trainer_0", format="dictionary_learning", metadata={"seed": 2})
    theirs = dictionary_learning.top_k.AutoEncoderTopK.from_pretrained(tmp_path / "trainer_0" / "ae.pt")
    assert int(theirs.k) == K
    _assert_same_outputs(ours, theirs, _x())
    config = json.loads((tmp_path / "trainer_0" / "config.json").read_text())
    assert config["trainer"]["dict_class"] == "AutoEncoderTopK" and config["trainer"]["sae_fast"] == {"seed": 2}
    again = load_sae(tmp_path / "trainer_0")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(again, name), getattr(ours, name)), name


def test_a_config_that_contradicts_its_weights_is_refused(dictionary_learning: SimpleNamespace,
                                                          tmp_path: Path) -> None:
    theirs = _make(dictionary_learning, "AutoEncoderTopK")
    _save(theirs, tmp_path / "k", "AutoEncoderTopK", k=K + 1)
    with pytest.raises(CheckpointError, match=r"config.json: field 'trainer.k' is 4 but ae.pt stores k=3"):
        load_sae(tmp_path / "k")
    _save(theirs, tmp_path / "size", "AutoEncoderTopK", k=K, dict_size=F * 2)
    with pytest.raises(CheckpointError, match=r"field 'trainer.dict_size' is 48 but ae.pt's decoder implies 24"):
        load_sae(tmp_path / "size")
    _save(theirs, tmp_path / "class", "JumpReluAutoEncoder")  # a TopK state dict under another class name
    with pytest.raises(CheckpointError, match=r"JumpReluAutoEncoder keeps its decoder as a 2-D tensor 'W_dec'"):
        load_sae(tmp_path / "class")
    _save(theirs, tmp_path / "relu", "AutoEncoder")
    with pytest.raises(CheckpointError, match=r"lacks tensors \['bias'\]"):
        load_sae(tmp_path / "relu")
