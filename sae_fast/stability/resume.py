"""Resuming a stability run: finding the saved run, and refusing one made with other settings or decoders.

A saved run is identified by its seeds, anchors, F, ``absolute``, the backend settings and the identity of
every decoder (:meth:`SeedDecoders.identity`: a hash of the whole decoder, not a sample of rows), compared
through :func:`sae_fast.provenance.require_same`, so a mismatch raises
:class:`~sae_fast.provenance.SettingsMismatch` naming each differing field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..provenance import require_same
from .result import META_FILE, Stability

log = logging.getLogger(__name__)

HINT = "pass the saved settings, use another out= directory, or delete it"


def check_compatible(old: Stability, names: list[str], anchors: list[int], num_features: int, absolute: bool,
                     where: Path, settings: dict[str, Any] | None = None, ids: list[str] | None = None) -> None:
    """SettingsMismatch when the run saved at ``where`` was made otherwise.

    Parameters
    ----------
    old : the saved run.
    names, anchors, num_features, absolute : the requested seeds (names), anchors, F and |cos| flag.
    where : the folder it was read from (named in the message).
    settings : the requested backend and index settings and d; None (or a run saved before they were recorded)
        skips that check.
    ids : the requested decoders' identities (:meth:`SeedDecoders.identity`); None (or a run saved before they
        were recorded, with a warning) skips that check.
    """
    saved = {"seeds": old.seeds, "anchors": old.anchors, "features": old.num_features, "absolute": old.absolute}
    now = {"seeds": names, "anchors": anchors, "features": num_features, "absolute": absolute}
    saved_settings = old.info.get("settings")
    if settings is not None and saved_settings is not None:
        saved, now = {**saved, **saved_settings}, {**now, **settings}
    require_same(saved, now, what="the stability run", where=where, hint=HINT)
    saved_ids = old.info.get("decoder_ids")
    if ids is None:
        return
    if saved_ids is None:
        log.warning("%s: the saved stability run records no decoder identities; its decoders are not checked",
                    where)
        return
    changed = [n for n, x, y in zip(names, saved_ids, ids) if x != y]
    require_same(dict(zip(names, saved_ids)), dict(zip(names, ids)), what="the stability run", where=where,
                 hint=f"decoders of seeds {changed} changed since the run was saved; use another out= "
                      "directory or delete it")


def checkpoint_dir(out_dir: Path | None, rank: int, world: int) -> Path | None:
    """Where this rank checkpoints: ``out`` in one process, ``out/rank{r}of{w}`` with several."""
    if out_dir is None or world == 1:
        return out_dir
    return out_dir / f"rank{rank}of{world}"


def load_prior(out_dir: Path | None, ckpt_dir: Path | None, world: int, names: list[str], anchors: list[int],
               num_features: int, absolute: bool) -> Stability | None:
    """The saved run to finish or return, checked against the request (see :func:`check_compatible`).

    Parameters
    ----------
    out_dir : the run's folder (None: nothing saved).
    ckpt_dir, world : this rank's checkpoint folder and the number of ranks.
    names, anchors, num_features, absolute : the requested seeds, anchors, F and |cos| flag.

    Returns
    -------
    The final result in ``out_dir`` (if complete, or in one process), else this rank's checkpoint, else None.
    """
    if out_dir is not None and (out_dir / META_FILE).is_file():
        old = Stability.load(out_dir)
        check_compatible(old, names, anchors, num_features, absolute, out_dir)
        if old.complete or world == 1:
            return old
    if world > 1 and ckpt_dir is not None and (ckpt_dir / META_FILE).is_file():
        old = Stability.load(ckpt_dir)
        check_compatible(old, names, anchors, num_features, absolute, ckpt_dir)
        return old
    return None
