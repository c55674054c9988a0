"""The study's inputs: the seeds of a run folder, the held-out activations (streamed), and a model's token strings.

Everything here is checked before any analysis starts: seeds that fail to load or differ in F, d or k, and
held-out activations of the wrong width or with NaN/inf rows raise a :class:`~sae_fast.errors.DataError`
naming the folder or file and what was expected.

Memory: the seeds' SAEs, O(S·F·d); the held-out rows are read batch by batch from their source (an in-memory
array stays where it is; .npy and caches are memory-mapped), O(batch·d) per batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.codes import fixed_k
from ..errors import DataError, UsageError
from ..formats.protocol import architecture_of

MIN_ROWS = 2


@dataclass
class HeldOut:
    """Held-out activations: ``read(start, stop)`` gives rows [start, stop) as a float32 CPU tensor.

    ``tokens`` (token strings of each text), ``where`` ((N, 2) text index and position of each row) and
    ``texts`` are set when a model gave the rows (snippets, splices)."""

    read: Callable[[int, int], torch.Tensor]
    num_rows: int
    d: int
    name: str
    tokens: list[list[str]] | None = None
    where: np.ndarray | None = None
    texts: list[str] | None = None

    def batches(self, batch_size: int, device: torch.device | str = "cpu", rows: int | None = None
                ) -> Iterator[torch.Tensor]:
        """(batch, d) float32 tensors on ``device``, first ``rows`` rows (all by default)."""
        stop = self.num_rows if rows is None else min(rows, self.num_rows)
        for start in range(0, stop, batch_size):
            yield self.read(start, min(start + batch_size, stop)).float().to(device)

    def tensor(self, rows: int | None = None) -> torch.Tensor:
        """The first ``rows`` rows as one (rows, d) float32 CPU tensor (O(rows·d): never (N, F))."""
        return self.read(0, self.num_rows if rows is None else min(rows, self.num_rows)).float()


def _from_array(x: Any, name: str, max_rows: int) -> HeldOut:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise DataError(f"{name} must have shape (N, d), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise DataError(f"{name} must hold floating-point activations, got {t.dtype}")
    t = t[:max_rows].detach().cpu()
    return HeldOut(lambda a, b: t[a:b].float(), int(t.shape[0]), int(t.shape[1]), name)


def open_heldout(activations: Any, max_rows: int, name: str = "activations") -> HeldOut:
    """A :class:`HeldOut` over the first ``max_rows`` rows of an (N, d) array/tensor, a .npy or .safetensors file,
    an activation cache folder, or an existing HeldOut. A missing or unreadable file is a DataError."""
    if isinstance(activations, HeldOut):
        n = min(activations.num_rows, max_rows)
        where = None if activations.where is None else activations.where[:n]
        return HeldOut(activations.read, n, activations.d, activations.name, activations.tokens, where,
                       activations.texts)
    if not isinstance(activations, (str, os.PathLike)):
        return _from_array(activations, name, max_rows)
    path = Path(activations)
    if not path.exists():
        raise DataError(f"{name} {path} does not exist; expected a .npy or .safetensors file or an activation cache "
                        "folder")
    try:
        if path.suffix == ".npy":  # memory-mapped: each batch is read when it is used
            mm = np.load(path, mmap_mode="r")
            if mm.ndim != 2 or mm.dtype.kind != "f":
                raise DataError(f"{name} {path} holds a {mm.dtype} array of shape {mm.shape}; expected (N, d) floats")
            return HeldOut(lambda a, b: torch.from_numpy(np.array(mm[a:b], dtype=np.float32)),
                           min(int(mm.shape[0]), max_rows), int(mm.shape[1]), f"{name} {path}")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
                if len(keys) != 1:
                    raise DataError(f"{name} {path} holds tensors {keys}; expected exactly one (N, d) tensor")
                return _from_array(f.get_slice(keys[0])[:max_rows], f"{name} {path}", max_rows)
        if path.is_dir():
            from ..activations import CachedSource

            src = CachedSource(path)
            n = min(int(src.num_tokens), max_rows)
            return HeldOut(lambda a, b: src.read(a, b).float(), n, int(src.d_in), f"{name} {path}")
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{name} {path} could not be read: {err}") from err
    raise DataError(f"{name} {path} is neither a .npy nor a .safetensors file nor an activation cache folder")


def check_heldout(held: HeldOut, d: int, batch_size: int = 65536) -> str:
    """Check width ``d``, at least 2 rows and no NaN/inf row (streamed); return a SHA-256 of the float32 rows
    (the activations' identity in the steps' fingerprints). Errors name the source and the first bad row."""
    if held.d != d:
        raise DataError(f"{held.name} have d={held.d} per row but the SAEs have d_in={d}")
    if held.num_rows < MIN_ROWS:
        raise DataError(f"{held.name} hold {held.num_rows} row(s); the study needs at least {MIN_ROWS}")
    digest = hashlib.sha256()
    for start in range(0, held.num_rows, batch_size):
        xb = held.read(start, min(start + batch_size, held.num_rows)).float().contiguous()
        bad = ~torch.isfinite(xb).all(dim=1)
        if bool(bad.any()):
            rows = (torch.nonzero(bad).flatten()[:5] + start).tolist()
            raise DataError(f"{held.name} hold NaN or inf values (rows {rows}); expected finite activations")
        digest.update(xb.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Seeds:
    """The run's seeds: names, folders and loaded SAEs (all on the CPU, float32, no gradients)."""

    names: list[str]
    folders: list[Path]
    saes: list[Any]
    identity: list[str] = field(default_factory=list)

    @property
    def num_latents(self) -> int:
        return int(self.saes[0].num_latents)

    @property
    def d(self) -> int:
        return int(self.saes[0].d_in)

    def decoders(self) -> list[torch.Tensor]:
        """(F, d) float32 decoder of each seed (views, no copy)."""
        return [s.W_dec.detach().float() for s in self.saes]


def find_seeds(run_dir: str | os.PathLike, hookpoint: str | None = None,
               names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of every saved SAE under ``run_dir`` in natural order (sparsify, SAELens or sae_fast
    layout, ``<seed>/`` or ``<seed>/<hookpoint>/``); ``names`` keeps only these, in that order."""
    from ..stability import find_saved_saes

    if not Path(run_dir).is_dir():
        raise DataError(f"run folder {run_dir} does not exist; expected a folder holding one subfolder per seed")
    try:
        found = [(name, f.parent) for name, f in find_saved_saes(run_dir, hookpoint)]
    except ValueError as err:
        if "no saved SAEs" not in str(err):
            raise DataError(str(err)) from err
        found = []
    if names is None:
        return found
    by_name = {n: f for n, f in found}
    by_name.update({n.split("/")[0]: f for n, f in found if "/" in n})
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{run_dir} lacks the saved SAEs of {missing}")
    return [(n, by_name[n]) for n in names]


def load_seeds(run_dir: str | os.PathLike, hookpoint: str | None = None, names: list[str] | None = None) -> Seeds:
    """Load every seed of ``run_dir`` (see :func:`find_seeds`); a seed that fails to load, or seeds that differ in
    F, d, architecture or k, raise a DataError naming the folders. Any architecture
    (:class:`sae_fast.formats.SparseCoder`). Memory O(S·F·d)."""
    from ..checkpoint import load_sae
    from ..provenance import sha256_file

    found = find_seeds(run_dir, hookpoint, names)
    if len(found) < 2:
        raise DataError(f"{run_dir} holds {len(found)} saved SAE(s) in its subfolders; the study needs >= 2 seeds")
    saes, ident = [], []
    for name, folder in found:
        try:
            sae = load_sae(folder, dtype=torch.float32, device="cpu").eval().requires_grad_(False)
        except (OSError, ValueError, RuntimeError) as err:
            raise DataError(f"seed {name} ({folder}) could not be loaded: {err}") from err
        saes.append(sae)
        weights = sorted(folder.glob("*.safetensors"))
        ident.append(sha256_file(weights[0]) if weights else str(folder))
    shapes = {(int(s.num_latents), int(s.d_in), architecture_of(s), fixed_k(s)) for s in saes}
    if len(shapes) > 1:
        detail = "; ".join(f"{folder}: F={s.num_latents}, d={s.d_in}, {architecture_of(s)}, k={fixed_k(s)}"
                           for (_, folder), s in zip(found, saes))
        raise DataError(f"the seeds of {run_dir} differ in dictionary size, width, architecture or k ({detail}); "
                        "expected one shape for every seed")
    return Seeds([n for n, _ in found], [f for _, f in found], saes, ident)


def activations_with_tokens(src: Any, max_rows: int) -> HeldOut:
    """Activations of a :class:`~sae_fast.activations.ModelSource` over its texts, in the texts' own order (a cut
    at ``max_rows`` keeps the first texts), with the token strings and the (text, position) of every row.
    Memory O(max_rows·d)."""
    xs, tokens, where = [], [], []
    size = src.text_batch_size
    for start in range(0, len(src.texts), size):
        batch = src.texts[start:start + size]
        acts = src.activations_of(batch).cpu()
        for toks in src.tokens_of(batch):
            where.extend((len(tokens), p) for p in range(len(toks)))
            tokens.append(toks)
        xs.append(acts)
        if sum(x.shape[0] for x in xs) >= max_rows:
            break
    x = torch.cat(xs)
    if x.shape[0] != len(where):
        raise RuntimeError(f"token bookkeeping mismatch: {x.shape[0]} activations, {len(where)} tokens")
    held = _from_array(x[:max_rows], f"activations of {src.model_name} at {src.hook.name}", max_rows)
    held.tokens, held.where, held.texts = tokens, np.asarray(where[:max_rows], dtype=np.int64), list(src.texts)
    return held


def check_model_hook(spec: Any) -> None:
    """A model spec needs exactly one hook point (UsageError otherwise)."""
    if (spec.layer is None) == (spec.module is None):
        raise UsageError(f"the model {spec.path} needs exactly one hook point, the one the SAEs were trained on: "
                         f"layer (the output of block L) or module, got layer={spec.layer}, module={spec.module}")


def open_study_model(spec: Any, d_in: int | None = None) -> tuple[Any, str | None]:
    """(ModelSource over the spec's texts, None for a causal LM else why no LM loss is reported); a DataError
    when the hook point's width differs from the SAEs' ``d_in``."""
    from ..activations import EMBEDDED_MODEL_NAME, ModelSource, load_embedded_model, shakespeare_sentences
    from ..analysis.splice import MINILM_NO_LM_LOSS, load_model
    from .config import EmbeddedDefault

    check_model_hook(spec)
    if spec.path == "embedded":
        (model, tokenizer), why, name = load_embedded_model(spec.device), MINILM_NO_LM_LOSS, EMBEDDED_MODEL_NAME
    else:
        model, tokenizer, why = load_model(spec.path, spec.device)
        name = str(spec.path)
    texts = spec.texts if spec.texts is not None else shakespeare_sentences()[EmbeddedDefault.train_texts:]
    src = ModelSource(model, tokenizer, texts, layer=spec.layer, module=spec.module, max_length=spec.max_length,
                      device=spec.device, model_name=name)
    if d_in is not None and src.d_in != d_in:
        raise DataError(f"the model {name} gives d={src.d_in} at hook point {src.hook.name} but the SAEs have "
                        f"d_in={d_in}")
    return src, why


@dataclass
class Inputs:
    """Everything the steps read besides earlier results: the seeds, the held-out rows (checked, with their
    digest), optional training rows for the pooled SAEs' refit, the model (snippets, splices) and the
    ``source`` description the report opens with."""

    seeds: Seeds
    held: HeldOut
    held_digest: str
    source: dict[str, Any]
    refit: HeldOut | None = None
    snippets: HeldOut | None = None
    model_src: Any = None
    model_spec: Any = None
    why_no_lm: str | None = None
    embedded_layer: int | None = None
    embedded_model_path: str | None = None

    def batches(self, batch_size: int, device: torch.device | str = "cpu", rows: int | None = None
                ) -> Iterator[torch.Tensor]:
        yield from self.held.batches(batch_size, device, rows=rows)

    def identity(self) -> dict[str, Any]:
        """What the steps' results depend on besides settings: seed names and weight digests, held-out digest."""
        return {"seeds": self.seeds.names, "weights": self.seeds.identity, "heldout": self.held_digest,
                "heldout_rows": self.held.num_rows, "refit_rows": None if self.refit is None else self.refit.num_rows,
                "model": None if self.model_spec is None else {"path": str(self.model_spec.path),
                                                              "layer": self.model_spec.layer,
                                                              "module": self.model_spec.module},
                "embedded_layer": self.embedded_layer}


def resolve_inputs(run_dir: Any, *, activations: Any, refit_activations: Any, out: Path, cfg: Any, embedded: Any,
                   model: Any, hookpoint: str | None, progress: bool) -> Inputs:
    """The study's inputs from what the caller gave: a run folder with held-out activations and/or its model, or
    nothing (then the embedded default is trained into ``out``). Checked before any analysis (module docstring).

    Parameters
    ----------
    run_dir : folder of trained seeds, or None for the embedded default.
    activations, refit_activations : held-out and training rows (array, .npy, .safetensors, cache folder).
    out : the study folder (the embedded default caches and trains there).
    cfg, embedded, model : StudyConfig, EmbeddedDefault, StudyModel.
    """
    from .embedded import train_embedded_default

    names = None
    snippets = src = spec = None
    emb_layer = emb_path = None
    why = "no model given (sae-fast study RUN_DIR --model PATH: a causal LM gives the next-token loss)"
    if run_dir is None:
        from ..analysis.splice import MINILM_NO_LM_LOSS
        from .config import EmbeddedDefault

        if activations is not None or model is not None:
            raise UsageError(f"{'activations are' if model is None else 'model is'} for a given run_dir; the "
                             "embedded default computes its own held-out activations (pass run_dir=<out>/seeds to "
                             "analyse its seeds on others)")
        emb = embedded or EmbeddedDefault()
        run_dir, held, info = train_embedded_default(out, emb, progress=progress)
        names = [f"seed{s}" for s in range(emb.num_seeds)]
        refit_activations = out / "activations" if refit_activations is None else refit_activations
        emb_layer, emb_path, why = emb.layer, emb.model_path, MINILM_NO_LM_LOSS
        source: dict[str, Any] = {"kind": "embedded default (MiniLM all-MiniLM-L6-v2 layer 3, Shakespeare)", **info}
    else:
        if activations is None and model is None:
            raise UsageError("activations (held-out activations of the same hook point) or the model they come from "
                             "are required with run_dir")
        source = {"kind": "given run", "run_dir": str(run_dir)}
        held = None if activations is None else open_heldout(activations, cfg.max_eval_tokens)
    seeds = load_seeds(run_dir, hookpoint, names)
    if model is not None:
        spec = model
        src, why = open_study_model(model, seeds.d)
        source.update({"model": src.model_name, "hook": src.hook.name, "max_length": src.max_length})
        if held is None or held.tokens is None:  # snippets from the model's own rows of the same hook point
            snippets = activations_with_tokens(src, cfg.max_eval_tokens)
            held = snippets if held is None else held
            if held is not snippets:
                source["snippet_tokens"] = snippets.num_rows
    held = open_heldout(held, cfg.max_eval_tokens)
    snippets = held if held.tokens is not None else snippets
    digest = check_heldout(held, seeds.d)
    refit = None
    if refit_activations is not None:
        refit = open_heldout(refit_activations, max(cfg.max_refit_tokens, cfg.max_eval_tokens), "refit_activations")
        if refit.d != seeds.d:
            raise DataError(f"{refit.name} have d={refit.d} per row but the SAEs have d_in={seeds.d}")
    if not 0 <= cfg.anchor < len(seeds.names):
        raise UsageError(f"anchor {cfg.anchor} outside the {len(seeds.names)} seeds")
    if cfg.browse_seed is not None and not 0 <= cfg.browse_seed < len(seeds.names):
        raise UsageError(f"browse_seed {cfg.browse_seed} outside the {len(seeds.names)} seeds")
    if cfg.masking_seeds is not None and cfg.masking_seeds > len(seeds.names):
        raise UsageError(f"masking_seeds {cfg.masking_seeds} is more than the {len(seeds.names)} seeds")
    sae = seeds.saes[0]
    source.update({"seeds": seeds.names, "num_seeds": len(seeds.names), "d": seeds.d, "num_latents": sae.num_latents,
                   "architecture": architecture_of(sae), "k": fixed_k(sae), "eval_tokens": held.num_rows})
    return Inputs(seeds, held, digest, source, refit=refit, snippets=snippets, model_src=src, model_spec=spec,
                  why_no_lm=why, embedded_layer=emb_layer, embedded_model_path=emb_path)
