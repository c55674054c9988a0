"""The embedded default: MiniLM over Shakespeare, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sae_fast.activations as act
from sae_fast.activations import (
    CachedSource,
    ModelSource,
    cache_activations,
)

from ._helpers import TEXTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- embedded default


def test_shakespeare_sentences_are_real_text() -> None:
    first = act.shakespeare_sentences(500)
    assert len(first) == 500 and all(30 <= len(s) <= 300 for s in first)
    assert any("Bertram" in s or "BERTRAM" in s for s in first)  # All's Well That Ends Well comes first


def test_embedded_default_is_minilm_layer3_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = act.embedded_default(num_texts=24, text_batch_size=8)
    assert src.d_in == 384 and src.hook.name == "layers.3" and src.model_name == act.EMBEDDED_MODEL_NAME
    cached = cache_activations(src, tmp_path / "c", progress=False)
    x = cached.read()
    assert x.shape[0] > 24 * 5 and torch.isfinite(x).all()
    enc = src.tokenizer(src.texts[:4], padding=True, return_tensors="pt", return_special_tokens_mask=True)
    keep = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
    with torch.no_grad():
        h3 = src.model(**enc, output_hidden_states=True).hidden_states[3][keep]
    torch.testing.assert_close(src.activations_of(src.texts[:4]), h3)


def test_cache_command_with_a_model_folder_and_a_text_file(tiny_bert, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from sae_fast.cli import main

    model, tokenizer = tiny_bert
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    rc = main(["cache", "--model", str(tmp_path / "model"), "--texts", str(tmp_path / "texts.txt"), "--layer", "2",
               "--cache-tokens", "50", "--out", str(tmp_path / "c"), "--no-progress"])
    assert rc == 0 and '"num_tokens": 50' in capsys.readouterr().out
    cached = CachedSource(tmp_path / "c")
    direct = torch.cat(list(ModelSource(model, tokenizer, TEXTS, layer=2).iter_activations()))[:50]
    torch.testing.assert_close(cached.read(), direct, rtol=1e-5, atol=1e-5)
    assert cached.manifest["hook"] == "layers.2" and cached.manifest["num_texts"] == len(TEXTS)


def test_embedded_model_from_a_packed_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bench/pack_minilm.py: fp16 embeddings + first 4 blocks + tokenizer + the texts, small enough for a device
    call; loaded by path or $SAE_FAST_EMBEDDED_MODEL, it gives the layer-3 activations of the installed model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pack_minilm", Path(__file__).parents[2] / "bench" / "pack_minilm.py")
    pack_minilm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_minilm)
    out = pack_minilm.pack(tmp_path / "packed", blocks=4)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 48 * 2**20
    assert len(list((out / "site" / "shksprdata" / "texts").glob("*_gut.txt"))) >= 40
    texts = act.shakespeare_sentences(12)
    full = act.embedded_default(num_texts=12).activations_of(texts)
    small = act.embedded_default(num_texts=12, model_path=out / "model")
    assert small.model.config.num_hidden_layers == 4 and small.model.dtype == torch.float32  # fp32 on a CPU
    got = small.activations_of(texts)
    assert got.shape == full.shape and float((got - full).norm() / full.norm()) < 2e-3  # fp16 weights
    monkeypatch.setenv(act.EMBEDDED_MODEL_ENV, str(out / "model"))
    assert act.load_embedded_model()[0].config.num_hidden_layers == 4
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        act.load_embedded_model(path=tmp_path)
