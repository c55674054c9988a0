"""A tiny GPT-2 and its word-level tokenizer, built offline (real Hugging Face code, random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = ["<|endoftext|>", "[UNK]", "to", "be", "or", "not", "the", "question", "is", "a", "rose", "by", "any",
         "other", "name", "would", "smell", "as", "sweet", "all", "world", "stage", "and", "men", "women"]
TEXTS = ["to be or not to be the question", "a rose by any other name would smell as sweet",
         "all the world is a stage", "and all the men and women", "the question is a question",
         "to be a rose", "not to be", "men and women would smell the rose"]


def tiny_tokenizer() -> Any:
    """Word-level tokenizer over :data:`WORDS`, EOS ``<|endoftext|>`` and no pad token (GPT-2 style)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", unk_token="[UNK]")


def tiny_gpt2(*, lm_head: bool = True, n_embd: int = 32, n_layer: int = 2, seed: int = 0,
              train_steps: int = 0) -> torch.nn.Module:
    """GPT2LMHeadModel (or, without ``lm_head``, GPT2Model) with random weights, in eval mode; ``train_steps``
    Adam steps on :data:`TEXTS` first (an LM head only) make its next-token loss far below uniform."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(WORDS), n_embd=n_embd, n_layer=n_layer, n_head=2, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    model = (GPT2LMHeadModel if lm_head else GPT2Model)(cfg)
    if train_steps:
        enc = tiny_tokenizer()(TEXTS, padding=False)
        ids = [torch.tensor(x) for x in enc["input_ids"]]
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: one thread is faster, and immune to a busy machine
        try:
            for _ in range(train_steps):
                loss = sum(torch.nn.functional.cross_entropy(model(t[None]).logits[0, :-1], t[1:]) for t in ids)
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            torch.set_num_threads(threads)
    return model.eval()


def save_tiny_gpt2(path: Path, **kw: Any) -> Path:
    """:func:`tiny_gpt2` and :func:`tiny_tokenizer` saved with ``save_pretrained`` in ``path``."""
    tiny_gpt2(**kw).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
