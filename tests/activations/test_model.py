"""Hugging Face models at a hook point (ModelSource), and caching them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sae_fast.activations.writing as act_writing
from sae_fast.activations import (
    CachedSource,
    ModelSource,
    NonFiniteActivationsError,
    cache_activations,
)

from ._helpers import TEXTS, take

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- HF models


def test_model_source_excludes_padding_and_special_tokens(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, layer=2, text_batch_size=3)
    acts = torch.cat(list(src.iter_activations()))
    n_real = sum(len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) - 2 for t in TEXTS)  # [CLS], [SEP]
    assert acts.shape == (n_real, 32)
    # The hook equals hidden_states[layer] at the real tokens, whatever the batching.
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    keep = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    mine = src.activations_of(TEXTS)
    torch.testing.assert_close(mine, hidden[2][keep], rtol=1e-5, atol=1e-5)
    sorted_by_batch = torch.cat(list(src.iter_activations()))
    assert sorted(sorted_by_batch[:, 0].tolist()) == pytest.approx(sorted(hidden[2][keep][:, 0].tolist()), abs=1e-5)
    layer0 = ModelSource(model, tokenizer, TEXTS, layer=0).activations_of(TEXTS)
    torch.testing.assert_close(layer0, hidden[0][keep])
    tokens = src.tokens_of(TEXTS)  # one token string per row of activations_of, in the same order
    assert [len(t) for t in tokens] == keep.sum(dim=1).tolist()
    assert tokens[0] == tokenizer.convert_ids_to_tokens(enc["input_ids"][0][keep[0]].tolist())
    assert not {"[CLS]", "[SEP]", "[PAD]"} & {tok for row in tokens for tok in row}


def test_model_source_module_hook_and_errors(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, module="encoder.layer.1.attention.output")
    assert src.d_in == 32 and src.hook.name == "encoder.layer.1.attention.output"
    with pytest.raises(ValueError, match="not found in the model"):
        ModelSource(model, tokenizer, TEXTS, module="encoder.layer.9")
    with pytest.raises(ValueError, match="exactly one of layer= or module="):
        ModelSource(model, tokenizer, TEXTS, layer=1, module="encoder")
    with pytest.raises(ValueError, match="model has 3 blocks"):
        ModelSource(model, tokenizer, TEXTS, layer=4)
    with pytest.raises(TypeError, match="sequence of strings"):
        ModelSource(model, tokenizer, "just one string", layer=1)


def test_model_source_reports_nan_activations(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, layer=2, text_batch_size=4)

    def poison(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[0, 1, 3] = float("nan")

    handle = model.encoder.layer[1].register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteActivationsError, match=r"layers\.2, text batch 0"):
            list(src.iter_activations())
    finally:
        handle.remove()


def test_model_source_batches_are_seeded_and_resumable(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, layer=1, text_batch_size=3, shuffle_tokens=40)
    stream = take(src, 8, batch_size=16, seed=2)
    assert all(b.shape == (16, 32) for b in stream)
    assert all(torch.equal(a, b) for a, b in zip(stream[3:], take(src, 5, batch_size=16, seed=2, start=3)))
    assert not torch.equal(stream[0], take(src, 1, batch_size=16, seed=5)[0])


def test_cache_activations_resumes_after_an_interruption(tiny_bert, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_bert
    texts = TEXTS * 3
    src = ModelSource(model, tokenizer, texts, layer=2, text_batch_size=4)
    full = cache_activations(src, tmp_path / "full", texts_per_shard=5, progress=False)

    real_write = act_writing._write_shard
    calls = {"n": 0}

    def crash_on_third(path, rows, dtype, first_row=0):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(path, rows, dtype, first_row)

    monkeypatch.setattr(act_writing, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(src, tmp_path / "resumed", texts_per_shard=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    with pytest.raises(FileNotFoundError, match="interrupted"):
        CachedSource(tmp_path / "resumed")
    with pytest.raises(ValueError, match="different settings"):
        cache_activations(src, tmp_path / "resumed", texts_per_shard=6, progress=False)
    monkeypatch.setattr(act_writing, "_write_shard", real_write)
    resumed = cache_activations(src, tmp_path / "resumed", texts_per_shard=5, progress=False)
    assert torch.equal(resumed.read(), full.read())
    assert resumed.manifest["model"] == full.manifest["model"] and resumed.manifest["hook"] == "layers.2"
    capped = cache_activations(src, tmp_path / "capped", texts_per_shard=5, max_tokens=100, progress=False)
    assert capped.num_tokens == 100 and torch.equal(capped.read(), full.read(0, 100))


# ---------------------------------------------------------------------------------------------- audit fixes


def test_texts_without_real_tokens_raise_instead_of_hanging(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, ["", "   "], layer=1)
    with pytest.raises(ValueError, match="no real tokens"):
        next(src.iter_batches(8))


def test_gpt2_style_tokenizer_without_a_pad_token(tmp_path: Path) -> None:
    """A tiny GPT-2 built offline (WordLevel tokenizer, no pad token): padded with EOS; the tokenizer is left as is."""
    pytest.importorskip("transformers")
    from tests.analysis._tiny_lm import tiny_gpt2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(lm_head=False, n_embd=16)
    texts = ["to be or not to be", "the question"]
    src = ModelSource(model, tokenizer, texts, layer=1)
    assert tokenizer.pad_token is None and src.tokenizer.pad_token == "<|endoftext|>"
    acts = torch.cat(list(src.iter_activations()))
    assert acts.shape == (8, 16)
    with torch.no_grad():  # block 1's output, token by token, equals the unpadded forward of each text
        alone = [model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states[1][0]
                 for t in texts]
    torch.testing.assert_close(src.activations_of(texts), torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_cache_cleans_temp_files_and_counts_texts(tiny_bert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, TEXTS, layer=2, text_batch_size=4)
    out = tmp_path / "c"
    out.mkdir()
    (out / ".shard_00000.npy.tmp99999").write_bytes(b"left by a killed run")

    def no_space(*args, **kwargs):
        raise OSError("no space left")

    with monkeypatch.context() as m:
        m.setattr(np, "save", no_space)
        with pytest.raises(OSError, match="no space"):
            cache_activations(src, out, texts_per_shard=4, progress=False)
    assert not list(out.glob(".*.tmp*"))  # the stale file went at the start, the failed one on the error
    bars: list[dict] = []
    real = act_writing.tqdm
    monkeypatch.setattr(act_writing, "tqdm", lambda **kw: bars.append(kw) or real(**kw))
    cache_activations(src, out, texts_per_shard=4, progress=False)
    assert (bars[0]["total"], bars[0]["unit"]) == (len(TEXTS), "text")
