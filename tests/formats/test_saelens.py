"""SAELens folders written by the real sae-lens 6.54.12 load in sae_fast with the same encode and decode outputs,
for each architecture it saves; sae_fast writes TopK folders that SAELens reads back with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sae_fast.checkpoint import CheckpointError, load_sae, save_sae
from sae_fast.formats import SparseCoder, architecture_of, as_args, read_decoder, to_sparse
from sae_fast.sae import TopKSAE

D, F, K = 8, 24, 3


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (decoder rows of unequal norm, thresholds > 0, so each of them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            values = torch.randn(p.shape, generator=g)
            if name in ("threshold", "log_threshold"):
                values = values.abs() * 0.3
            elif name == "W_dec":
                values = values * torch.rand(p.shape[0], 1, generator=g).mul(3).add(0.2)
            elif name == "r_mag":
                values = values * 0.2
            p.copy_(values.to(p.dtype))


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


def _inference(sl: SimpleNamespace, arch: str, **cfg: Any) -> Any:
    classes = {"topk": (sl.topk_sae.TopKSAE, sl.topk_sae.TopKSAEConfig),
               "standard": (sl.standard_sae.StandardSAE, sl.standard_sae.StandardSAEConfig),
               "jumprelu": (sl.jumprelu_sae.JumpReLUSAE, sl.jumprelu_sae.JumpReLUSAEConfig),
               "gated": (sl.gated_sae.GatedSAE, sl.gated_sae.GatedSAEConfig)}
    cls, cfg_cls = classes[arch]
    return cls(cfg_cls(d_in=D, d_sae=F, **cfg))


CASES = [("topk", {"k": K}, "topk"), ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}, "topk"),
         ("topk", {"k": K, "apply_b_dec_to_input": False}, "topk"),
         ("topk", {"k": K, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": False}, "topk"),
         ("standard", {}, "relu"),
         ("standard", {"apply_b_dec_to_input": False}, "relu"), ("jumprelu", {}, "jumprelu"),
         ("jumprelu", {"apply_b_dec_to_input": False}, "jumprelu"), ("gated", {}, "gated")]


@pytest.mark.parametrize(("arch", "cfg", "ours_arch"), CASES, ids=[f"{a}-{sorted(c)}" for a, c, _ in CASES])
def test_saved_by_saelens_loads_with_the_same_outputs(saelens: SimpleNamespace, tmp_path: Path, arch: str,
                                                      cfg: dict, ours_arch: str) -> None:
    theirs = _inference(saelens, arch, **cfg)
    _randomise(theirs, seed=len(str(cfg)) + len(arch))
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert isinstance(ours, SparseCoder) and architecture_of(ours) == ours_arch
    assert isinstance(ours, TopKSAE) == (arch == "topk")  # TopK keeps the kernels
    assert (ours.d_in, ours.num_latents, ours.k) == (D, F, K if arch == "topk" else None)
    _assert_same_outputs(ours, theirs, _x())
    torch.testing.assert_close(read_decoder(tmp_path / "sae"), theirs.W_dec.detach())


def test_rescale_acts_by_decoder_norm_is_not_ignored(saelens: SimpleNamespace, tmp_path: Path) -> None:
    """The reported bug: read as a plain TopK SAE, this SAE reconstructs with a relative error of ~0.5."""
    theirs = _inference(saelens, "topk", k=K, rescale_acts_by_decoder_norm=True)
    _randomise(theirs, seed=3)
    theirs.save_model(tmp_path / "sae")
    x = _x(64)
    with torch.no_grad():
        naive = TopKSAE(D, F, K)
        for name in ("b_enc", "W_dec", "b_dec"):
            getattr(naive, name).copy_(getattr(theirs, name))
        naive.W_enc.copy_(theirs.W_enc.T)
        expected = theirs(x)
        assert ((naive.decode(*naive.encode(x)) - expected).norm() / expected.norm()) > 0.1  # the test can fail
        ours = load_sae(tmp_path / "sae")
        torch.testing.assert_close(ours.decode(*ours.encode(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_training_sae_saved_for_inference_loads_with_the_same_outputs(saelens: SimpleNamespace, tmp_path: Path,
                                                                       kind: str) -> None:
    """SAELens' training SAEs as save_inference_model writes them (BatchTopK/Matryoshka become jumprelu)."""
    if kind == "topk":
        cfg, cls = saelens.topk_sae.TopKTrainingSAEConfig(d_in=D, d_sae=F, k=K), saelens.topk_sae.TopKTrainingSAE
    elif kind == "batchtopk":
        cfg = saelens.batchtopk_sae.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K)
        cls = saelens.batchtopk_sae.BatchTopKTrainingSAE
    else:
        mod = saelens.matryoshka_batchtopk_sae
        cfg = mod.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=[8, F])
        cls = mod.MatryoshkaBatchTopKTrainingSAE
    trained = cls(cfg)
    _randomise(trained, seed=5)
    if kind != "topk":
        trained.topk_threshold.fill_(0.7)
    trained.save_inference_model(tmp_path / "sae")
    theirs = saelens.sae.SAE.load_from_disk(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert architecture_of(ours) == ("topk" if kind == "topk" else "jumprelu")
    _assert_same_outputs(ours, theirs, _x())


def test_expected_average_only_in_is_folded_from_the_scaler_or_refused(saelens: SimpleNamespace,
                                                                        tmp_path: Path) -> None:
    theirs = _inference(saelens, "topk", k=K, normalize_activations="expected_average_only_in")
    _randomise(theirs, seed=7)
    theirs.save_model(tmp_path / "sae")
    with pytest.raises(CheckpointError, match=r"normalize_activations.*activation_scaler.json"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    ours = load_sae(tmp_path / "sae")
    theirs.fold_activation_norm_scaling_factor(2.5)  # what SAELens does with the factor
    _assert_same_outputs(ours, theirs, _x())


@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale"])
def test_runtime_normalisation_is_refused_naming_the_field(saelens: SimpleNamespace, tmp_path: Path,
                                                           mode: str) -> None:
    theirs = _inference(saelens, "standard", normalize_activations=mode)
    theirs.save_model(tmp_path / "sae")
    with pytest.raises(CheckpointError, match=f"cfg.json: field 'normalize_activations' is '{mode}'"):
        load_sae(tmp_path / "sae")
    assert read_decoder(tmp_path / "sae").shape == (F, D)  # the decoder alone is still read for stability


def test_saelens_reads_what_sae_fast_writes(saelens: SimpleNamespace, tmp_path: Path) -> None:
    ours = TopKSAE(D, F, K, seed=1)
    _randomise(ours, seed=11)
    save_sae(ours, tmp_path / "sae", format="saelens", metadata={"seed": 1})
    theirs = saelens.sae.SAE.load_from_disk(tmp_path / "sae")
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == K
    _assert_same_outputs(ours, theirs, _x())


@pytest.mark.parametrize(("arch", "cfg"), [("standard", {}), ("jumprelu", {"apply_b_dec_to_input": False}),
                                           ("gated", {})])
def test_saelens_reads_the_other_architectures_sae_fast_writes(saelens: SimpleNamespace, tmp_path: Path, arch: str,
                                                               cfg: dict) -> None:
    original = _inference(saelens, arch, **cfg)
    _randomise(original, seed=13)
    original.save_model(tmp_path / "theirs")
    ours = load_sae(tmp_path / "theirs")
    save_sae(ours, tmp_path / "ours", format="saelens")
    theirs = saelens.sae.SAE.load_from_disk(tmp_path / "ours")
    assert type(theirs) is type(original) and theirs.cfg.apply_b_dec_to_input == original.cfg.apply_b_dec_to_input
    _assert_same_outputs(ours, theirs, _x())
    with pytest.raises(ValueError, match="format='saelens' only"):
        save_sae(ours, tmp_path / "dl", format="dictionary_learning")


def test_a_batchtopk_training_checkpoint_is_refused_but_its_decoder_is_read(saelens: SimpleNamespace,
                                                                           tmp_path: Path) -> None:
    cfg = saelens.batchtopk_sae.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K)
    trained = saelens.batchtopk_sae.BatchTopKTrainingSAE(cfg)
    _randomise(trained, seed=17)
    trained.save_model(tmp_path / "sae")  # the training layout: architecture 'batchtopk', topk_threshold
    with pytest.raises(CheckpointError, match="'batchtopk' is a SAELens training checkpoint; save it with "
                                              "save_inference_model"):
        load_sae(tmp_path / "sae")
    torch.testing.assert_close(read_decoder(tmp_path / "sae"), trained.W_dec.detach())
