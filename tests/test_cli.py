"""`sae-fast`: a user's mistake is one line and an exit status (2 usage, 1 data); a bug keeps its traceback;
option ranges are checked at parse time; output folders are checked before any computation."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_fast import cli
from sae_fast.cli import main, user_error
from sae_fast.errors import DataError, OutputDirError, UsageError


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int) -> str:
    """The stderr of `sae-fast ARGV`, which must be one line and exit with ``code``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sae-fast {argv[0]}: error: "), err
    return err


def _sae_dirs(root: Path, num: int = 2, f: int = 32, d: int = 8) -> Path:
    for s in range(num):
        (root / f"seed{s}").mkdir(parents=True)
        save_file({"W_dec": torch.randn(f, d, generator=torch.Generator().manual_seed(s))},
                  root / f"seed{s}" / "sae.safetensors")
    return root


def _raise(exc: BaseException):
    def run(args) -> int:
        raise exc
    return run


@pytest.mark.parametrize("argv", [["stability", "DIR", "--theta", "5"], ["match", "A", "B", "--theta", "-1.5"],
                                  ["study", "--theta", "nan"], ["stability", "DIR", "--eps", "0.9"],
                                  ["study", "--eps", "0.5"], ["stability", "DIR", "--eps", "-0.1"]])
def test_theta_and_eps_are_range_checked_at_parse_time_in_every_command(argv: list[str],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(argv, capsys, 2)  # DIR, A and B do not exist: nothing was loaded
    assert ("cosine threshold in [-1, 1]" in err) if "--theta" in argv else ("must be in [0, 0.5)" in err)


@pytest.mark.parametrize("argv", [["stability", "DIR", "--device", "tpu"], ["match", "A", "B", "--device", "cuda:99"],
                                  ["train", "--device", "gpu"], ["cache", "--model-device", "tpu"],
                                  ["study", "--device", "tpu"]])
def test_devices_are_checked_at_parse_time(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A device that does not exist here was a torch RuntimeError traceback after the inputs were loaded."""
    err = _fails(argv, capsys, 2)
    option = argv[-2]
    assert f"argument {option}: " in err
    assert "must be a torch device such as 'cpu'" in err or "CUDA device(s) are visible" in err or (
        "CUDA is not available" in err)


@pytest.mark.parametrize("argv", [["match", "A", "B", "--k", "0"], ["stability", "DIR", "--stack", "-2"],
                                  ["stability", "DIR", "--save-every", "0"], ["train", "--batch-size", "0"],
                                  ["train", "--total-tokens", "-5"], ["cache", "--cache-tokens", "0"],
                                  ["angles", "--threads", "-1"], ["cache", "--max-length", "x"]])
def test_sizes_must_be_positive(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(argv, capsys, 2)
    assert "must be a positive" in err or "must be a non-negative" in err or "positive int" in err


def test_one_line_for_a_missing_or_bad_file_and_traceback_with_debug(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["angles", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], capsys, 1)
    assert f"A {tmp_path / 'a.npy'} does not exist" in err
    (tmp_path / "a.npy").write_bytes(b"not a numpy file")
    np.save(tmp_path / "b.npy", np.eye(4)[:, :2])
    assert "is not a readable .npy file" in _fails(["angles", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                                                   capsys, 1)
    np.save(tmp_path / "a.npy", np.eye(5)[:, :2])
    assert "the same number of rows d" in _fails(["angles", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                                                 capsys, 1)
    for argv in (["--debug", "angles", "x.npy", "y.npy"], ["angles", "x.npy", "y.npy", "--debug"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "DataError" in err


def test_stability_match_and_study_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _fails(["stability", str(tmp_path / "nope"), "--no-progress"], capsys, 1)
    err = _fails(["study", str(tmp_path / "nope"), "--activations", str(tmp_path / "x.npy"), "--out",
                  str(tmp_path / "s"), "--no-synthetic", "--no-progress"], capsys, 1)
    assert str(tmp_path / "nope") in err or str(tmp_path / "x.npy") in err
    assert not (tmp_path / "nope").exists()  # a missing DIR is not created by the writability check
    _sae_dirs(tmp_path / "mixed", 1)
    save_file({"W_dec": torch.randn(32, 12)}, tmp_path / "odd.safetensors")
    err = _fails(["match", str(tmp_path / "mixed" / "seed0"), str(tmp_path / "odd.safetensors"), "--key", "W"],
                 capsys, 1)  # the file lacks the tensor: a data error naming the file
    assert "has no tensor 'W'" in err


def test_unwritable_out_is_refused_before_any_computation(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.matching as matching
    import sae_fast.stability as stability

    runs = _sae_dirs(tmp_path / "runs")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(stability, "stability_scores", _raise(AssertionError("computed before checking --out")))
    monkeypatch.setattr(matching, "match", _raise(AssertionError("computed before checking --out")))
    err = _fails(["stability", str(runs), "--out", str(blocker / "stab"), "--no-progress"], capsys, 1)
    assert f"--out {blocker / 'stab'} is not writable" in err
    err = _fails(["match", str(runs / "seed0"), str(runs / "seed1"), "--out", str(blocker / "m.safetensors")],
                 capsys, 1)
    assert f"the folder of --out {blocker} is a file" in err
    err = _fails(["match", str(runs / "seed0"), str(runs / "seed1"), "--out", str(tmp_path)], capsys, 1)
    assert f"--out {tmp_path} is a folder" in err


def test_user_errors_and_bugs_are_told_apart() -> None:
    def raised(exc_factory):
        try:
            exc_factory()
        except BaseException as exc:
            return exc
        raise AssertionError("nothing raised")

    def library_value_error() -> None:
        from sae_fast.activations import dtype_name

        dtype_name("int8")

    assert user_error(UsageError("x")) == 2 and user_error(DataError("x")) == 1 and user_error(OutputDirError("x")) == 1
    assert user_error(raised(library_value_error)) == 2  # raised by sae_fast's own check
    assert user_error(raised(lambda: np.zeros(3).reshape(2, 2))) is None  # numpy's ValueError: a bug
    assert user_error(raised(lambda: {}["key"])) is None  # a KeyError is a bug
    assert user_error(raised(lambda: torch.zeros(2) @ torch.zeros(3))) is None
    assert user_error(OSError(errno.ENOSPC, "No space left on device")) == 1
    assert user_error(raised(lambda: open("/nonexistent/file"))) == 1  # noqa: SIM115


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_fast.commands import angles

    monkeypatch.setattr(angles, "run", _raise(KeyError("a bug")))
    monkeypatch.setattr(cli, "_command_modules", lambda: [angles])
    with pytest.raises(KeyError, match="a bug"):
        main(["angles", "--demo"])


def test_interrupt_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sae_fast.commands import angles

    monkeypatch.setattr(angles, "run", _raise(KeyboardInterrupt()))
    monkeypatch.setattr(cli, "_command_modules", lambda: [angles])
    with pytest.raises(SystemExit) as exit_info:
        main(["angles", "--demo"])
    assert exit_info.value.code == 130 and capsys.readouterr().err == "sae-fast angles: interrupted\n"


def test_the_installed_command_prints_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sae_fast", "stability", str(tmp_path / "runs"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == f"sae-fast stability: error: decoders directory {tmp_path / 'runs'} does not exist\n"
    proc = subprocess.run([sys.executable, "-m", "sae_fast", "stability", "x", "--theta", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cosine threshold in [-1, 1]" in proc.stderr
