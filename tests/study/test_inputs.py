"""Bad input is refused before any work, naming the path and what was expected; nothing finished is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_fast.checkpoint import save_sae
from sae_fast.errors import DataError, OutputDirError
from sae_fast.sae import TopKSAE
from sae_fast.study import StudyConfig, study
from sae_fast.study.inputs import open_heldout
from sae_fast.study.step import MARKER

from ._planted import FAST, planted_run


def _study(run, x, out):
    return study(run, activations=x, out_dir=out, synthetic=False, progress=False, config=StudyConfig(**FAST))


def _no_step_finished(out):
    return not out.exists() or not list(out.glob(f"*/{MARKER}"))


def test_mixed_dictionary_sizes_name_the_folders(tmp_path):
    run, x = planted_run(tmp_path)
    save_sae(TopKSAE(16, 32, 4, seed=9), run / "seed9")
    with pytest.raises(DataError, match=r"differ in dictionary size.*seed9: F=32.*expected one shape"):
        _study(run, x, tmp_path / "out")
    assert _no_step_finished(tmp_path / "out")


def test_a_seed_that_fails_to_load_is_named(tmp_path):
    run, x = planted_run(tmp_path)
    (run / "seed1" / "sae.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"seed seed1 \(.*seed1\) could not be loaded"):
        _study(run, x, tmp_path / "out")
    assert _no_step_finished(tmp_path / "out")


def test_activations_of_the_wrong_width_or_with_nan_rows(tmp_path):
    run, x = planted_run(tmp_path)
    np.save(tmp_path / "wide.npy", np.zeros((100, 17), dtype=np.float32))
    with pytest.raises(DataError, match=r"wide\.npy have d=17 per row but the SAEs have d_in=16"):
        _study(run, str(tmp_path / "wide.npy"), tmp_path / "out")
    bad = x.clone()
    bad[1234, 3] = float("nan")
    with pytest.raises(DataError, match=r"NaN or inf values \(rows \[1234\]\)"):
        _study(run, bad, tmp_path / "out")
    with pytest.raises(DataError, match=r"missing\.npy does not exist"):
        _study(run, str(tmp_path / "missing.npy"), tmp_path / "out")
    assert _no_step_finished(tmp_path / "out")


def test_out_that_is_a_file_or_not_writable(tmp_path):
    run, x = planted_run(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match=r"file is a file; expected a folder"):
        _study(run, x, tmp_path / "file")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):  # root ignores permissions
            with pytest.raises(OutputDirError, match="not writable"):
                _study(run, x, locked / "out")
    finally:
        locked.chmod(0o700)


def test_heldout_sources_stream_the_same_rows(tmp_path):
    from sae_fast.activations import save_tensor_cache

    x = torch.randn(300, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    cache = save_tensor_cache(x, tmp_path / "cache").path
    for src in (x, str(tmp_path / "x.npy"), cache):
        held = open_heldout(src, 250)
        assert held.num_rows == 250
        assert torch.equal(torch.cat(list(held.batches(64))), x[:250])
