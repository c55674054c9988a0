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
