"""read_decoder's memory is O(1) as its docstrings state: the decoder is memory-mapped, not read, until used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_fast.formats import read_decoder

F, D = 1 << 16, 256  # a 64 MiB fp32 decoder
STATUS = Path("/proc/self/status")


def _rss_mib() -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _dictionary_learning(folder: Path) -> None:
    folder.mkdir()
    torch.save({"decoder.weight": torch.ones(D, F)}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderTopK", "dict_size": F}}))


def _saelens(folder: Path) -> None:
    folder.mkdir()
    save_file({"W_dec": torch.ones(F, D)}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": D, "d_sae": F}))


@pytest.mark.skipif(not STATUS.is_file(), reason="needs /proc/self/status (Linux) to read the resident memory")
@pytest.mark.parametrize("write", [_dictionary_learning, _saelens], ids=["dictionary_learning", "saelens"])
def test_read_decoder_maps_the_file_instead_of_reading_it(tmp_path: Path, write) -> None:
    write(tmp_path / "sae")
    before = _rss_mib()
    w_dec = read_decoder(tmp_path / "sae")
    opened = _rss_mib() - before
    assert w_dec.shape == (F, D)
    assert float(w_dec.sum()) == F * D  # reading it touches the pages: the test can see them
    touched = _rss_mib() - before
    assert opened < 16, f"read_decoder took {opened:.0f} MiB for a 64 MiB decoder"
    assert touched > opened + 8, "resident memory did not grow when the decoder was read; the check cannot fail"
