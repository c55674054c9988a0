"""A training output folder: an earlier run is refused unless resumed or overwritten; an overwrite leaves
nothing of it behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_fast.errors import OutputDirError, UsageError
from sae_fast.train_guard import claim_output_dir, earlier_run


def _earlier(run: Path) -> None:
    (run / "seed0").mkdir(parents=True)
    (run / "seed0" / "sae.safetensors").write_bytes(b"weights")
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")
    (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("the user's own file")


def test_an_earlier_run_is_refused_kept_resumed_or_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _earlier(run)
    assert earlier_run(run) == ["checkpoints/step_00000010", "log.jsonl", "seed0/sae.safetensors"]
    refused = pytest.raises(OutputDirError, match=r"already holds trained SAEs .* --resume .* --overwrite")
    with refused, claim_output_dir(run):
        pass
    assert (run / "seed0" / "sae.safetensors").is_file()
    with claim_output_dir(run, resume=True):
        assert (run / "seed0" / "sae.safetensors").is_file() and (run / ".sae_fast.lock").is_file()
        with claim_output_dir(run, resume=True):  # nested in this process (the command, then the trainer)
            pass
        assert (run / ".sae_fast.lock").is_file()
    with pytest.raises(UsageError), claim_output_dir(run, resume=True, overwrite=True):
        pass
    with claim_output_dir(run, overwrite=True) as folder:
        assert sorted(p.name for p in folder.iterdir()) == [".sae_fast.lock", "notes.txt"]
    assert not (run / ".sae_fast.lock").exists()


def test_a_log_alone_counts_as_an_earlier_run_and_a_failed_start_leaves_no_folder(tmp_path: Path) -> None:
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "log.jsonl").write_text("{}\n")
    with pytest.raises(OutputDirError, match="an earlier run"), claim_output_dir(tmp_path / "killed"):
        pass
    with pytest.raises(RuntimeError), claim_output_dir(tmp_path / "new"):
        raise RuntimeError("bad config")
    assert not (tmp_path / "new").exists()
