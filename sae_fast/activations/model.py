"""Activations of a Hugging Face model at a hook point (:class:`ModelSource`, :class:`HookPoint`)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import ActivationSource, check_finite


class _StopForward(Exception):
    """Raised inside a hook to skip the layers after the hook point."""


def _layer_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (BERT encoder.layer, GPT-2 h, Llama layers, ...)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        module for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h", "blocks")
    ]
    for module in candidates:
        if n_layers is None or len(module) == n_layers:
            return module
    raise ValueError("could not find the model's list of transformer blocks; pass module=<name> instead of layer")


@dataclass(frozen=True)
class HookPoint:
    """Where to read activations: ``layer`` (residual stream after that many blocks) or ``module`` (its output)."""

    layer: int | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if (self.layer is None) == (self.module is None):
            raise ValueError(f"give exactly one of layer= or module=, got layer={self.layer!r}, module={self.module!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise ValueError(f"layer must be a non-negative int, got {self.layer!r}")

    @property
    def name(self) -> str:
        return f"layers.{self.layer}" if self.layer is not None else str(self.module)


def hook_module(model: torch.nn.Module, hook: HookPoint) -> torch.nn.Module | None:
    """The module whose output is ``hook`` (None for layer 0, the embeddings). A module name is also looked up
    under the model's ``base_model_prefix`` (``h.1.mlp`` of a GPT2Model is ``transformer.h.1.mlp`` of its LM)."""
    config = getattr(model, "config", None)
    if hook.layer is not None:
        n_layers = getattr(config, "num_hidden_layers", None)
        if n_layers is not None and hook.layer > n_layers:
            raise ValueError(f"layer={hook.layer} but the model has {n_layers} blocks (0..{n_layers} allowed)")
        return _layer_list(model)[hook.layer - 1] if hook.layer > 0 else None
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    for name in (str(hook.module), f"{prefix}.{hook.module}"):
        if name in modules:
            return modules[name]
    close = [n for n in modules if n and str(hook.module).split(".")[-1] in n][:8]
    raise ValueError(f"module {hook.module!r} not found in the model; similar names: {close}")


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, or a copy padding with its EOS token when it has no pad token (GPT-2 style)."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    if getattr(tokenizer, "eos_token", None) is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
    tokenizer = copy.deepcopy(tokenizer)  # leave the caller's tokenizer as it was
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ModelSource(ActivationSource):
    """Activations of a Hugging Face model at a hook point, computed on the fly over ``texts``.

    Texts are tokenised in batches of ``text_batch_size`` (sorted by length inside groups of
    ``16 * text_batch_size`` to waste little on padding); tokens that are padding or special
    (``[CLS]``, ``[SEP]``, BOS/EOS) are dropped. ``iter_batches`` shuffles through a seeded buffer of
    ``shuffle_tokens`` vectors; for training many seeds or long runs, cache first (:func:`cache_activations`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, layer: int | None = None,
                 module: str | None = None, max_length: int = 128, text_batch_size: int = 64,
                 device: str | torch.device = "cpu", model_name: str | None = None,
                 shuffle_tokens: int = 1 << 16) -> None:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        if max_length <= 0 or text_batch_size <= 0 or shuffle_tokens <= 0:
            raise ValueError("max_length, text_batch_size and shuffle_tokens must be positive")
        self.hook = HookPoint(layer, module)
        self.model = model.eval()
        self.tokenizer = with_pad_token(tokenizer)  # GPT-2 style: pad with EOS (masked out anyway)
        self.texts = list(texts)
        self.max_length = max_length
        self.text_batch_size = text_batch_size
        self.device = torch.device(device)
        self.shuffle_tokens = shuffle_tokens
        config = getattr(model, "config", None)
        self.model_name = model_name or str(getattr(config, "_name_or_path", "") or type(model).__name__)
        self._module = hook_module(model, self.hook)
        self.d_in = self._probe_width()

    def _probe_width(self) -> int:
        return int(self.activations_of(self.texts[:1]).shape[1])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name, "hook": self.hook.name, "num_texts": len(self.texts),
                "max_length": self.max_length}

    @torch.inference_mode()
    def activations_of(self, texts: Sequence[str]) -> torch.Tensor:
        """Activations (real tokens, d) of a batch of texts, in text then position order: the rows that
        ``tokens_of`` names. Memory: the model's hidden states of the batch."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_special_tokens_mask=True)
        keep = enc["attention_mask"].bool() & ~enc.pop("special_tokens_mask").bool()
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if self._module is None:  # layer 0: the embeddings, as the model reports them
            hidden = self.model(**enc, output_hidden_states=True).hidden_states[0]
        else:
            captured: list[torch.Tensor] = []

            def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                captured.append(output[0] if isinstance(output, tuple) else output)
                raise _StopForward

            handle = self._module.register_forward_hook(hook)
            try:
                self.model(**enc)
            except _StopForward:
                pass
            finally:
                handle.remove()
            if not captured:
                raise RuntimeError(f"hook point {self.hook.name} was not reached by the model's forward")
            hidden = captured[0]
        if hidden.dim() != 3 or hidden.shape[:2] != keep.shape:
            raise ValueError(f"hook point {self.hook.name} gives shape {tuple(hidden.shape)}, expected (batch, "
                             f"seq, d) matching the tokens {tuple(keep.shape)}")
        acts = hidden[keep.to(hidden.device)].float()
        return acts

    _activations_of = activations_of  # the former name, still called by sae_fast/seed_study.py

    def tokens_of(self, texts: Sequence[str]) -> list[list[str]]:
        """The token strings of each text that ``activations_of`` gives a row for (real, non-special tokens)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_special_tokens_mask=True)
        out = []
        for ids, att, special in zip(enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"]):
            keep = [ids[i] for i, (a, s) in enumerate(zip(att, special)) if a and not s]
            out.append(self.tokenizer.convert_ids_to_tokens(keep))
        return out

    def _text_batches(self, order: Sequence[int]) -> Iterator[list[str]]:
        """Texts in the given order, in batches, sorted by length inside groups of 16 batches."""
        group = 16 * self.text_batch_size
        for g in range(0, len(order), group):
            chunk = sorted(order[g:g + group], key=lambda i: len(self.texts[i]))
            for b in range(0, len(chunk), self.text_batch_size):
                yield [self.texts[i] for i in chunk[b:b + self.text_batch_size]]

    def iter_activations(self, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Activations text batch by text batch (one pass), each checked for NaN/inf."""
        for _, acts in self.iter_text_batches(order):
            yield acts

    def iter_text_batches(self, order: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(number of texts, activations) per text batch, as :meth:`iter_activations`."""
        order = range(len(self.texts)) if order is None else order
        for i, texts in enumerate(self._text_batches(list(order))):
            acts = self.activations_of(texts)
            check_finite(acts, f"{self.model_name} {self.hook.name}, text batch {i} (first text {texts[0][:60]!r})")
            yield len(texts), acts

    def iter_batches(self, batch_size: int, *, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        if batch_size <= 0 or start < 0:
            raise ValueError(f"batch_size must be positive and start non-negative, got {batch_size}, {start}")
        produced, epoch, chunk = 0, 0, 0
        pending: list[torch.Tensor] = []
        pending_rows = 0
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(self.texts)).tolist()
            epoch_rows = 0
            for acts in self.iter_activations(order):
                epoch_rows += acts.shape[0]
                pending.append(acts)
                pending_rows += acts.shape[0]
                if pending_rows < max(self.shuffle_tokens, batch_size):
                    continue
                buffer = torch.cat(pending)
                buffer = buffer[torch.from_numpy(np.random.default_rng([seed, epoch, chunk]).permutation(
                    buffer.shape[0])).to(buffer.device)]
                chunk += 1
                full = buffer.shape[0] // batch_size * batch_size
                for b in range(0, full, batch_size):
                    if produced >= start:
                        yield buffer[b:b + batch_size]
                    produced += 1
                pending, pending_rows = [buffer[full:]], buffer.shape[0] - full
            if epoch_rows == 0:
                raise ValueError(f"no real tokens in the {len(self.texts)} texts: after tokenisation every text is "
                                 "empty or only padding and special tokens")
            epoch += 1
