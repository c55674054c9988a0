"""Resuming a stability run checks every whole decoder, not a sample of rows: an edit anywhere is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_fast import stability_scores
from sae_fast.provenance import SettingsMismatch

# the sampled-row fingerprint of earlier versions read rows 0, 8, ..., 56 of a (64, d) decoder
SAMPLED_ROWS = set(range(0, 64, 8))


def _decoders(num: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(64, 16, generator=g) for _ in range(num)]


def test_an_edited_row_outside_the_old_sample_is_refused(tmp_path: Path) -> None:
    decs = _decoders()
    stability_scores(decs, out=tmp_path, progress=False)
    edited = [d.clone() for d in decs]
    assert 3 not in SAMPLED_ROWS
    edited[1][3] += 0.25
    with pytest.raises(SettingsMismatch, match=r"decoders of seeds \['1'\] changed"):
        stability_scores(edited, out=tmp_path, progress=False)
    assert stability_scores(decs, out=tmp_path, progress=False).complete  # the same decoders: reused


def test_an_edited_file_without_digest_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for s, w in enumerate(_decoders()):
        (run / f"seed{s}").mkdir(parents=True)
        save_file({"W_dec": w}, str(run / f"seed{s}" / "sae.safetensors"))  # no embedded SHA-256
    stability_scores(run, out=tmp_path / "st", progress=False)
    file = run / "seed2" / "sae.safetensors"
    changed = load_file(str(file))["W_dec"]
    changed[45] *= -1.0
    save_file({"W_dec": changed}, str(file))
    with pytest.raises(SettingsMismatch, match=r"decoders of seeds \['seed2'\] changed"):
        stability_scores(run, out=tmp_path / "st", progress=False)
