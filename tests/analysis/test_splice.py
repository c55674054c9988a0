import pytest
import torch

from sae_fast.analysis.splice import embedding_splice


def _exact_sae(d: int):
    """TopK SAE with W = [I; -I], k = d: it reconstructs any x exactly (|x_i| on latent i or d + i)."""
    from sae_fast import TopKSAE

    sae = TopKSAE(d, 2 * d, d, seed=0)
    w = torch.cat([torch.eye(d), -torch.eye(d)])
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.requires_grad_(False)


def test_embedding_splice_on_a_tiny_bert():
    transformers = pytest.importorskip("transformers")
    from sae_fast.activations import load_embedded_model

    try:
        _, tokenizer = load_embedded_model("cpu")
    except ModuleNotFoundError:
        pytest.skip("embedded model not installed")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg).eval()
    texts = ["To be, or not to be, that is the question.", "Now is the winter of our discontent."]
    res = embedding_splice(model, tokenizer, texts, 2, _exact_sae(16), {"half": list(range(8)), "all": list(range(32))})
    assert res["none"] == pytest.approx(0.0, abs=1e-5)
    assert res["all"] > res["half"] > 1e-4
    with pytest.raises(ValueError, match="layer"):
        embedding_splice(model, tokenizer, texts, 7, _exact_sae(16), {})


@pytest.fixture(scope="module")
def tiny_lm():
    """A tiny GPT-2 (d = 32) trained briefly on the helper's texts, so that its loss is far below uniform."""
    pytest.importorskip("transformers")
    from ._tiny_lm import TEXTS, tiny_gpt2, tiny_tokenizer

    return tiny_gpt2(train_steps=40), tiny_tokenizer(), TEXTS


def test_next_token_splice_exact_and_zero_reconstructions(tiny_lm, one_torch_thread):
    from sae_fast.analysis.splice import next_token_splice

    model, tokenizer, texts = tiny_lm
    res = next_token_splice(model, tokenizer, texts, _exact_sae(32), {"all": list(range(64)), "half": list(range(16))},
                            layer=1, batch_size=8)
    n_words = sum(len(t.split()) for t in texts)
    assert res["num_tokens"] == n_words - len(texts)  # every token but the first of each text is predicted
    assert res["clean"] < 1.0  # trained: far below uniform (ln 25 ≈ 3.2)
    assert res["none"] == pytest.approx(res["clean"], abs=1e-4)  # the exact reconstruction changes nothing
    assert res["all"] > res["half"] > res["clean"] and res["all"] - res["clean"] > 1.0  # zeros: much worse
    model.train()  # dropout on: the splice evaluates in eval mode anyway and gives the mode back
    try:
        again = next_token_splice(model, tokenizer, texts, _exact_sae(32), {"all": list(range(64))}, layer=1,
                                  batch_size=8)
        assert model.training and again["clean"] == pytest.approx(res["clean"], abs=1e-6)
    finally:
        model.eval()


def test_next_token_splice_ignores_padding_and_names_modules_like_the_base_model(tiny_lm, one_torch_thread):
    from sae_fast.analysis.splice import next_token_splice

    model, tokenizer, texts = tiny_lm
    masks = {"half": list(range(16))}
    batched = next_token_splice(model, tokenizer, texts, _exact_sae(32), masks, layer=2, batch_size=8)
    alone = next_token_splice(model, tokenizer, texts, _exact_sae(32), masks, layer=2, batch_size=1)  # no padding
    assert batched == pytest.approx(alone, rel=1e-5)
    by_name = next_token_splice(model, tokenizer, texts, _exact_sae(32), masks, module="h.1", batch_size=8)
    assert by_name == pytest.approx(batched, rel=1e-6)  # GPT2Model's name for the LM's transformer.h.1
    with pytest.raises(ValueError, match="layer >= 1"):
        next_token_splice(model, tokenizer, texts, _exact_sae(32), masks, layer=0)


def test_lm_loss_study_masks_and_deltas(tiny_lm, one_torch_thread):
    import numpy as np

    from sae_fast.analysis.splice import lm_loss_study

    model, tokenizer, texts = tiny_lm
    labels = np.zeros(64, dtype=int)
    labels[:8], labels[8:48] = 1, -1  # 8 stable, 40 unstable: n = 8 vs 32
    res = lm_loss_study(model, tokenizer, texts[:4], _exact_sae(32), labels, layer=1)
    masks = res["masks"]
    assert set(masks) == {"none", "stable", "unstable", "random_like_stable", "random_like_unstable", "stable_n",
                          "unstable_4n"}
    assert masks["stable_n"]["size"] == 8 and masks["unstable_4n"]["size"] == 32 and masks["none"]["size"] == 0
    for name, m in masks.items():
        assert m["name"] == name
        assert m["delta_vs_clean"] == pytest.approx(m["loss"] - res["clean"])
        assert m["delta_vs_recon"] == pytest.approx(m["loss"] - masks["none"]["loss"])
    assert masks["unstable"]["delta_vs_clean"] > 0 and res["hook"] == "layers.1" and res["num_texts"] == 4


def test_load_model_tells_causal_lms_from_others(tmp_path):
    pytest.importorskip("transformers")
    from sae_fast.analysis.splice import load_model

    from ._tiny_lm import save_tiny_gpt2

    model, _, why = load_model(str(save_tiny_gpt2(tmp_path / "lm")))
    assert why is None and type(model).__name__ == "GPT2LMHeadModel"
    model, _, why = load_model(str(save_tiny_gpt2(tmp_path / "base", lm_head=False)))
    assert type(model).__name__ == "GPT2Model"
    assert "not a causal LM" in why and "GPT2Model" in why
