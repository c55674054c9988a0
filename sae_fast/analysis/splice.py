"""Splicing the (masked) SAE reconstruction back into the model (method.md §3.1, "prediction-relevant").

The hook point (the output of block ``layer``, or of a named module: :class:`sae_fast.activations.HookPoint`)
is replaced, on every real token that is neither padding nor special (the tokens the SAE is trained on, see
:class:`~sae_fast.activations.ModelSource`), by the SAE's reconstruction with a latent set zeroed after
encoding; the rest of the model runs on it.

* A **causal LM** (its config names a ``*ForCausalLM`` / ``*LMHeadModel`` class): :func:`next_token_splice`
  reports the mean next-token cross-entropy (nats per predicted token; labels shifted by one, positions whose
  input or target is padding excluded) of the clean model, of the unmasked reconstruction and of each mask,
  and :func:`lm_loss_study` the deltas.
* The embedded model, all-MiniLM-L6-v2, is a sentence-embedding BertModel shipped **without its masked-LM
  head** (no ``cls.predictions`` weights in the package), so neither a next-token nor a masked-LM loss exists
  for it. What it has is its output, the mean-pooled, L2-normalised sentence embedding: :func:`embedding_splice`
  reports the **embedding distortion** ``1 - cos(e, e')`` between the original and spliced embeddings.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..activations import HookPoint, hook_module, quiet_transformers, with_pad_token
from ._common import STABLE, UNSTABLE, ArrayLike, index_array
from .codes import as_args, mask_code

MINILM_NO_LM_LOSS = ("all-MiniLM-L6-v2 ships as a sentence-embedding BertModel without its masked-LM head (no "
                     "cls.predictions weights), so it has neither a next-token nor a masked-LM loss; the embedding "
                     "distortion with the reconstruction spliced in is reported instead (splice)")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def why_not_causal_lm(config: Any) -> str | None:
    """None when ``config.architectures`` names a causal-LM class, else why no next-token loss exists."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return None
    return (f"the model is not a causal LM (config.architectures = {archs or 'none'}, no *ForCausalLM or "
            "*LMHeadModel class), so it has no next-token loss; a masked-LM loss is not computed (it would need "
            "the model's MLM head and a token-masking protocol)")


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, str | None]:
    """A Hugging Face model folder, offline: (model, tokenizer, None) for a causal LM (with its LM head), else
    (base model, tokenizer, why no LM loss is reported)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        why = why_not_causal_lm(AutoConfig.from_pretrained(path))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = (AutoModel if why else AutoModelForCausalLM).from_pretrained(path).eval().to(device)
    return model, tokenizer, why


def splice_masks(labels: ArrayLike, *, ratio: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The latent sets masked by the splice analyses: stable, unstable, random sets of their sizes, and n stable
    versus ratio * n unstable (when both exist)."""
    lab = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    stable, unstable = np.flatnonzero(lab == STABLE), np.flatnonzero(lab == UNSTABLE)
    n = int(min(len(stable), len(unstable) // ratio))
    masks: dict[str, np.ndarray] = {"stable": stable, "unstable": unstable,
                                    "random_like_stable": rng.choice(len(lab), len(stable), replace=False),
                                    "random_like_unstable": rng.choice(len(lab), len(unstable), replace=False)}
    if n > 0:
        masks["stable_n"] = rng.choice(stable, n, replace=False)
        masks[f"unstable_{ratio}n"] = rng.choice(unstable, ratio * n, replace=False)
    return masks


@contextlib.contextmanager
def _spliced(model: torch.nn.Module, hook: HookPoint, sae: Any, masks: dict[str, ArrayLike]
             ) -> Iterator[dict[str, Any]]:
    """A forward hook on ``hook``'s module, for the duration: with ``state["mask"]`` set to a mask name ("none":
    nothing zeroed), its output at ``state["keep"]`` (batch, seq) becomes the SAE reconstruction with that
    latent set zeroed after encoding; with ``state["mask"]`` None the output is left alone."""
    module = hook_module(model, hook)
    if module is None:
        raise ValueError("splicing needs a block's or module's output: layer >= 1 or module=<name>")
    F = sae.num_latents
    device = sae.W_dec.device
    rows = {"none": torch.zeros(F, dtype=torch.bool, device=device)}
    for name, idx in masks.items():
        rows[name] = torch.zeros(F, dtype=torch.bool, device=device)
        rows[name][torch.as_tensor(index_array(idx, F, f"masks[{name!r}]"), device=device)] = True
    state: dict[str, Any] = {"mask": None, "keep": None, "names": list(rows)}

    def replace(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if state["mask"] is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        keep = state["keep"].to(hidden.device)
        if not bool(keep.any()):
            return output
        code = mask_code(sae.encode(hidden[keep].to(device, torch.float32)), rows[state["mask"]])
        new = hidden.clone()
        new[keep] = sae.decode(*as_args(code)).to(hidden.device, hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(replace)
    was_training = model.training
    model.eval()  # no dropout: every loss (the clean one included) is deterministic
    try:
        yield state
    finally:
        handle.remove()
        model.train(was_training)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Tokenised batch on ``device`` and its (batch, seq) mask of real, non-special tokens."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_special_tokens_mask=True)
    keep = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
    return {k: v.to(device) for k, v in enc.items()}, keep


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
    if not texts:
        raise ValueError("texts is empty")
    device = _model_device(model)

    def embed(enc: dict) -> torch.Tensor:
        last = model(**enc).last_hidden_state
        att = enc["attention_mask"].unsqueeze(-1).to(last.dtype)
        return torch.nn.functional.normalize((last * att).sum(1) / att.sum(1).clamp_min(1), dim=-1)

    with _spliced(model, HookPoint(layer=layer), sae, masks) as state:
        sums = dict.fromkeys(state["names"], 0.0)
        for start in range(0, len(texts), batch_size):
            enc, state["keep"] = _encode(tokenizer, texts[start : start + batch_size], max_length, device)
            state["mask"] = None
            ref = embed(enc)
            for name in sums:
                state["mask"] = name
                sums[name] += float((1.0 - (embed(enc) * ref).sum(-1)).sum())
    return {name: total / len(texts) for name, total in sums.items()}


@torch.no_grad()
def next_token_splice(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    sae: Any,
    masks: dict[str, ArrayLike],
    *,
    layer: int | None = None,
    module: str | None = None,
    max_length: int = 128,
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Mean next-token cross-entropy of a causal LM (its forward returns ``logits`` over the vocabulary): key
    "clean" for the model as it is, "none" for the unmasked reconstruction spliced in at the hook point, one key
    per named mask; "num_tokens": predicted tokens (targets that are padding, or follow padding, excluded).

    The mean is over all predicted tokens of all texts (not of per-batch means), so batching and padding do not
    change it. Texts are padded on the right (with EOS when the tokenizer has no pad token).
    """
    if not texts:
        raise ValueError("texts is empty")
    from tqdm.auto import tqdm

    tokenizer = with_pad_token(tokenizer)
    if getattr(tokenizer, "padding_side", "right") != "right":
        tokenizer = copy.copy(tokenizer)
        tokenizer.padding_side = "right"
    device = _model_device(model)
    sums: dict[str, float] = {}
    count = 0
    with _spliced(model, HookPoint(layer, module), sae, masks) as state:
        runs = [None, *state["names"]]
        sums = {("clean" if name is None else name): 0.0 for name in runs}
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="next-token loss", unit="batch", disable=not progress):
            enc, state["keep"] = _encode(tokenizer, texts[start : start + batch_size], max_length, device)
            att = enc["attention_mask"].bool()
            valid = att[:, 1:] & att[:, :-1]
            targets = enc["input_ids"][:, 1:][valid]
            count += int(targets.numel())
            for name in runs:
                state["mask"] = name
                logits = model(**enc, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1][valid].float(), targets, reduction="sum")
                sums["clean" if name is None else name] += float(loss)
    if count == 0:
        raise ValueError("no predicted tokens: every text is shorter than 2 tokens")
    return {**{name: total / count for name, total in sums.items()}, "num_tokens": count}


def splice_study(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], layer: int, sae: Any,
                 labels: ArrayLike, *, ratio: int = 4, seed: int = 0) -> dict:
    """Embedding distortion for the full reconstruction and after masking stable / unstable / n vs ratio*n /
    random same-size sets (:func:`splice_masks`)."""
    masks = splice_masks(labels, ratio=ratio, seed=seed)
    dist = embedding_splice(model, tokenizer, texts, layer, sae, masks)
    return {"distortion": dist, "num_texts": len(texts), "layer": layer,
            "sizes": {k: len(v) for k, v in masks.items()},
            "metric": "mean 1 - cos(original, spliced) of the mean-pooled normalised sentence embedding"}


def lm_loss_study(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], sae: Any, labels: ArrayLike, *,
                  layer: int | None = None, module: str | None = None, ratio: int = 4, seed: int = 0,
                  max_length: int = 128, batch_size: int = 16, progress: bool = False) -> dict:
    """Next-token loss of a causal LM with the (masked) reconstruction spliced in (:func:`next_token_splice`, masks
    of :func:`splice_masks`): ``clean``, and per mask ("none": the unmasked reconstruction) its size, ``loss``,
    ``delta_vs_clean`` (loss - clean) and ``delta_vs_recon`` (loss - the unmasked reconstruction's loss)."""
    masks = splice_masks(labels, ratio=ratio, seed=seed)
    loss = next_token_splice(model, tokenizer, texts, sae, masks, layer=layer, module=module, max_length=max_length,
                             batch_size=batch_size, progress=progress)
    sizes = {"none": 0, **{k: len(v) for k, v in masks.items()}}
    return {"metric": "mean next-token cross-entropy (nats per predicted token), reconstruction spliced in at real "
                      "non-special tokens",
            "hook": HookPoint(layer, module).name, "num_texts": len(texts), "num_tokens": loss["num_tokens"],
            "clean": loss["clean"],
            "masks": {name: {"name": name, "size": sizes[name], "loss": loss[name],
                             "delta_vs_clean": loss[name] - loss["clean"], "delta_vs_recon": loss[name] - loss["none"]}
                      for name in sizes}}
