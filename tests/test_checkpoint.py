"""Checkpoint formats (sparsify, SAELens), atomic writes, corruption detection, memory-mapped decoders."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast.checkpoint import (
    CheckpointError,
    atomic_write,
    detect_format,
    load_decoder,
    load_sae,
    read_cfg,
    save_sae,
)
from sae_fast.sae import TopKSAE

DATA = Path(__file__).parent / "data"
SPARSIFY_FIXTURE = DATA / "sparsify_1.3.3_topk_d8_f24"  # written by the real eai-sparsify 1.3.3 (SparseCoder)
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _sae(d: int = 8, f: int = 24, k: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> TopKSAE:
    sae = TopKSAE(d, f, k, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(f, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d, generator=g))
    return sae


def _assert_same(a: TopKSAE, b: TopKSAE) -> None:
    assert (a.d_in, a.num_latents, a.k) == (b.d_in, b.num_latents, b.k)
    for name in PARAMS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("fmt", ["sparsify", "saelens"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_exact(tmp_path: Path, fmt: str, dtype: torch.dtype) -> None:
    sae = _sae(dtype=dtype)
    save_sae(sae, tmp_path / "s", metadata={"seed": 0, "note": "x"}, format=fmt)
    assert detect_format(tmp_path / "s") == fmt
    loaded = load_sae(tmp_path / "s")
    assert loaded.dtype == dtype
    _assert_same(sae, loaded)
    assert read_cfg(tmp_path / "s")["sae_fast"] == {"seed": 0, "note": "x"}
    assert torch.equal(load_decoder(tmp_path / "s"), sae.W_dec.detach())


def test_sparsify_layout_keys_shapes_and_cfg(tmp_path: Path) -> None:
    sae = _sae(d=8, f=24, k=3)
    save_sae(sae, tmp_path / "s")
    tensors = load_file(tmp_path / "s" / "sae.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "encoder.weight": (24, 8), "encoder.bias": (24,), "W_dec": (24, 8), "b_dec": (8,)}
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    ours = json.loads((SPARSIFY_FIXTURE / "cfg.json").read_text())
    assert set(ours) <= set(cfg)  # every field sparsify writes, plus our extra "sae_fast"
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"], cfg["activation"]) == (8, 24, 3, "topk")


def test_loads_a_checkpoint_written_by_real_sparsify_and_computes_the_same() -> None:
    sae = load_sae(SPARSIFY_FIXTURE)
    assert (sae.d_in, sae.num_latents, sae.k) == (8, 24, 3)
    ref = load_file(SPARSIFY_FIXTURE / "reference_io.safetensors")
    values, indices = sae.encode(ref["x"])
    order_ours, order_ref = indices.sort(dim=1).indices, ref["top_indices"].sort(dim=1).indices
    assert torch.equal(indices.gather(1, order_ours), ref["top_indices"].gather(1, order_ref))
    torch.testing.assert_close(values.gather(1, order_ours), ref["top_acts"].gather(1, order_ref))
    torch.testing.assert_close(sae(ref["x"]).recon, ref["sae_out"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load_decoder(SPARSIFY_FIXTURE), load_file(SPARSIFY_FIXTURE / "sae.safetensors")["W_dec"])


def _import_real_sparsify(monkeypatch: pytest.MonkeyPatch):
    """sparsify.sparse_coder without the package __init__ (which imports its trainer and `datasets`)."""
    spec = importlib.util.find_spec("sparsify")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("eai-sparsify is not installed (pip install --no-deps eai-sparsify simple-parsing natsort einops)")
    for module in ("simple_parsing", "natsort", "einops"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"eai-sparsify needs {module}")
    monkeypatch.setenv("SPARSIFY_DISABLE_TRITON", "1")
    import transformers  # noqa: F401  (before a stand-in `accelerate`, which transformers would probe)

    if "sparsify" not in sys.modules:
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg  # a bare package: its submodules import without its __init__
    if importlib.util.find_spec("accelerate") is None and "sparsify.sparse_coder" not in sys.modules:
        # Only while sparsify imports (removed after the test, so no later import sees a fake accelerate).
        acc, utils = types.ModuleType("accelerate"), types.ModuleType("accelerate.utils")
        utils.send_to_device = lambda x, device: x  # the only name sparsify.utils takes from accelerate
        acc.utils = utils
        monkeypatch.setitem(sys.modules, "accelerate", acc)
        monkeypatch.setitem(sys.modules, "accelerate.utils", utils)
    from sparsify.sparse_coder import SparseCoder

    return SparseCoder


def test_real_sparsify_loads_ours_and_reconstructs_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SparseCoder = _import_real_sparsify(monkeypatch)
    sae = _sae(d=8, f=24, k=3, seed=4)
    save_sae(sae, tmp_path / "ours", metadata={"seed": 4})
    theirs = SparseCoder.load_from_disk(tmp_path / "ours")
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out.float(), sae(x).recon, rtol=1e-5, atol=1e-6)
    theirs.save_to_disk(tmp_path / "theirs")
    _assert_same(sae, load_sae(tmp_path / "theirs"))


def _write_saelens(folder: Path, sae: TopKSAE, cfg: dict) -> None:
    folder.mkdir(parents=True)
    save_file({"W_enc": sae.W_enc.detach().t().contiguous(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_loads_saelens_folders_v6_and_older(tmp_path: Path) -> None:
    sae = _sae()
    v6 = {"architecture": "topk", "d_in": 8, "d_sae": 24, "k": 3, "dtype": "float32", "device": "cpu",
          "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
          "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"}}
    _write_saelens(tmp_path / "v6", sae, v6)
    _assert_same(sae, load_sae(tmp_path / "v6"))
    old = {"architecture": "standard", "d_in": 8, "d_sae": 24, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": True}
    _write_saelens(tmp_path / "old", sae, old)
    assert load_sae(tmp_path / "old").k == 3
    relu = {"architecture": "standard", "d_in": 8, "d_sae": 24}
    _write_saelens(tmp_path / "relu", sae, relu)
    loaded = load_sae(tmp_path / "relu")  # a standard SAE is a ReLU SAE, never reread as TopK
    assert (loaded.architecture, loaded.k) == ("relu", None)
    with pytest.raises(CheckpointError, match="not TopK"):
        load_sae(tmp_path / "relu", k=5)


def test_saelens_without_b_dec_on_input_is_converted_exactly(tmp_path: Path) -> None:
    sae = _sae()
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 24, "k": 3, "apply_b_dec_to_input": False}
    _write_saelens(tmp_path / "s", sae, cfg)
    loaded = load_sae(tmp_path / "s")
    x = torch.randn(7, 8, dtype=torch.float64)
    # SAELens computes relu(topk(x @ W_enc + b_enc)) without subtracting b_dec first.
    pre = x @ sae.W_enc.detach().double().t() + sae.b_enc.detach().double()
    top = pre.topk(3, dim=1)
    expect = torch.zeros(7, 24, dtype=torch.float64).scatter(1, top.indices, top.values.relu())
    got_v, got_i = loaded.to(torch.float64).encode(x)
    got = torch.zeros(7, 24, dtype=torch.float64).scatter(1, got_i, got_v)
    torch.testing.assert_close(got, expect)


def test_truncated_and_corrupted_files_raise_clear_errors(tmp_path: Path) -> None:
    save_sae(_sae(), tmp_path / "s")
    weights = tmp_path / "s" / "sae.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) - 16])
    with pytest.raises(CheckpointError, match="truncated"):
        load_sae(tmp_path / "s")
    with pytest.raises(CheckpointError, match="truncated"):
        load_decoder(tmp_path / "s")
    weights.write_bytes(good[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_sae(tmp_path / "s")
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # a flipped bit inside b_dec's data
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sae(tmp_path / "s")
    weights.write_bytes(good)
    (tmp_path / "s" / "cfg.json").write_text('{"d_in": 8, "num_lat')
    with pytest.raises(CheckpointError, match="not JSON"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({"d_in": 9, "num_latents": 24, "k": 3}))
    with pytest.raises(CheckpointError, match="shape"):
        load_sae(tmp_path / "s")


def test_missing_folders_and_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        load_sae(tmp_path / "empty")
    save_sae(_sae(), tmp_path / "s")
    (tmp_path / "s" / "cfg.json").unlink()
    with pytest.raises(CheckpointError, match=r"cfg\.json is missing"):
        load_sae(tmp_path / "s")


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    sae = _sae()
    with torch.no_grad():
        sae.W_dec[3, 2] = float("nan")
    save_sae(sae, tmp_path / "s")
    with pytest.raises(CheckpointError, match="NaN"):
        load_sae(tmp_path / "s")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def failing(f) -> None:
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left behind


def test_load_decoder_is_memory_mapped(tmp_path: Path) -> None:
    sae = _sae(f=64)
    save_sae(sae, tmp_path / "s")
    dec = load_decoder(tmp_path / "s")
    assert dec.shape == (64, 8) and dec.dtype == torch.float32
    assert torch.equal(dec, sae.W_dec.detach())
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the weights file itself is mapped into this process
        assert str((tmp_path / "s" / "sae.safetensors").resolve()) in maps.read_text()


def test_save_sae_validates_its_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="TopKSAE"):
        save_sae(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(ValueError, match="format"):
        save_sae(_sae(), tmp_path / "x", format="onnx")
