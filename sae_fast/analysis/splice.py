"""Splicing the (masked) SAE reconstruction back into the model (method.md §3.1, "prediction-relevant").

The paper's metric is probably the next-token loss of a causal LM with the reconstruction spliced in
(unconfirmed). The embedded model, all-MiniLM-L6-v2, is a sentence-embedding BertModel shipped **without its
masked-LM head** (no ``cls.predictions`` weights in the package), so neither a next-token nor a masked-LM loss
exists for it. What it does have is its output: the mean-pooled, L2-normalised sentence embedding. Here the
hidden state after block ``layer`` is replaced, on every real token, by the SAE's reconstruction (with a latent
set zeroed after encoding), the remaining blocks run, and the **embedding distortion** ``1 - cos(e, e')``
between the original and the spliced sentence embeddings is reported (0 = no change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._common import ArrayLike, index_array


@torch.no_grad()
def embedding_splice(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int,
    sae: Any,
    masks: dict[str, ArrayLike],
    *,
    max_length: int = 128,
    batch_size: int = 64,
) -> dict:
    """Mean embedding distortion ``1 - cos`` per named latent mask ("none": the unmasked reconstruction)."""
    from ..activations import _layer_list

    if not texts:
        raise ValueError("texts is empty")
    blocks = _layer_list(model)
    if not 1 <= layer <= len(blocks):
        raise ValueError(f"layer must be in [1, {len(blocks)}], got {layer}")
    F = sae.num_latents
    mask_rows = {"none": torch.zeros(F, dtype=torch.bool)}
    for name, idx in masks.items():
        m = torch.zeros(F, dtype=torch.bool)
        m[torch.as_tensor(index_array(idx, F, f"masks[{name!r}]"))] = True
        mask_rows[name] = m
    state: dict[str, Any] = {}

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        mask = state.get("mask")
        if mask is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        keep = state["keep"]
        values, indices = sae.encode(hidden[keep].float())
        values = values * (~mask_rows[mask][indices]).to(values.dtype)
        new = hidden.clone()
        new[keep] = sae.decode(values, indices).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def embed(enc: dict) -> torch.Tensor:
        last = model(**enc).last_hidden_state
        att = enc["attention_mask"].unsqueeze(-1).to(last.dtype)
        return torch.nn.functional.normalize((last * att).sum(1) / att.sum(1).clamp_min(1), dim=-1)

    handle = blocks[layer - 1].register_forward_hook(hook)
    sums = {name: 0.0 for name in mask_rows}
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt", return_special_tokens_mask=True)
            state["keep"] = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
            state["mask"] = None
            ref = embed(enc)
            for name in mask_rows:
                state["mask"] = name
                sums[name] += float((1.0 - (embed(enc) * ref).sum(-1)).sum())
    finally:
        handle.remove()
    return {name: total / len(texts) for name, total in sums.items()}


def splice_study(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], layer: int, sae: Any,
                 labels: ArrayLike, *, ratio: int = 4, seed: int = 0) -> dict:
    """Embedding distortion for the full reconstruction and after masking stable / unstable / n vs ratio*n /
    random same-size sets (the same sets as the EV masking study)."""
    lab = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    stable, unstable = np.flatnonzero(lab == 1), np.flatnonzero(lab == -1)
    n = int(min(len(stable), len(unstable) // ratio))
    masks: dict[str, np.ndarray] = {"stable": stable, "unstable": unstable,
                                    "random_like_stable": rng.choice(len(lab), len(stable), replace=False),
                                    "random_like_unstable": rng.choice(len(lab), len(unstable), replace=False)}
    if n > 0:
        masks["stable_n"] = rng.choice(stable, n, replace=False)
        masks[f"unstable_{ratio}n"] = rng.choice(unstable, ratio * n, replace=False)
    dist = embedding_splice(model, tokenizer, texts, layer, sae, masks)
    return {"distortion": dist, "num_texts": len(texts), "layer": layer,
            "sizes": {k: len(v) for k, v in masks.items()},
            "metric": "mean 1 - cos(original, spliced) of the mean-pooled normalised sentence embedding"}
