"""`sae-fast cache`: the default folder names every setting, and an existing cache is never reused blindly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_fast.activations import save_tensor_cache
from sae_fast.cli import build_parser, main
from sae_fast.commands.cache import default_cache_dir, requested_spec


def test_default_cache_dir_depends_on_every_source_setting(tmp_path: Path) -> None:
    parser = build_parser()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "corpus.txt").write_text("one text\nanother text\n", encoding="utf-8")
    (tmp_path / "b" / "corpus.txt").write_text("something else\n", encoding="utf-8")

    def folder(*argv: str) -> Path:
        return default_cache_dir(parser.parse_args(["train", *argv]))

    texts_a, texts_b = str(tmp_path / "a" / "corpus.txt"), str(tmp_path / "b" / "corpus.txt")
    assert folder("--texts", texts_a) != folder("--texts", texts_b)
    assert folder("--texts", texts_a, "--max-length", "16") != folder("--texts", texts_a)
    assert folder("--texts", texts_a, "--num-texts", "1") != folder("--texts", texts_a)
    assert folder("--texts", texts_a) == folder("--texts", texts_a)
    assert folder("--texts", texts_a).name.startswith("minilm-l3-corpus-131072-float32-")


def test_cache_refuses_a_folder_made_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tensor_cache(torch.randn(100, 6), tmp_path / "c", model="tensor")
    (tmp_path / "texts.txt").write_text("to be or not to be\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["cache", "--out", str(tmp_path / "c"), "--texts", str(tmp_path / "texts.txt"), "--layer", "5",
              "--no-progress"])
    err = capsys.readouterr().err
    assert "different settings" in err and "model: 'tensor'" in err and "hook" in err


def test_a_cache_under_the_old_unhashed_name_is_reused_only_if_it_matches(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.activations as activations

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train"])
    hashed = default_cache_dir(args)
    legacy = hashed.with_name(hashed.name.rsplit("-", 1)[0])
    assert default_cache_dir(args) == hashed  # no legacy folder
    save_tensor_cache(torch.randn(10, 6), legacy, model="tensor")  # another cache under the old name
    assert default_cache_dir(args) == hashed
    seen = []
    monkeypatch.setattr(activations, "open_matching_cache", lambda path, spec: seen.append(spec) or object())
    assert default_cache_dir(args) == legacy  # the same cache under the old name
    assert len(seen) == 1 and seen[0] == requested_spec(args)


def test_cache_errors_are_one_line_before_any_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_fast.commands.cache as cache

    monkeypatch.setattr(cache, "build_model_source", lambda args: pytest.fail("the model ran"))
    (tmp_path / "a_file").write_text("")
    for argv, expected in ((["--out", str(tmp_path / "a_file" / "c")], "is not writable"),
                           (["--out", str(tmp_path / "c"), "--texts", str(tmp_path / "none.txt")],
                            f"--texts {tmp_path / 'none.txt'} does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            main(["cache", *argv, "--no-progress"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.startswith("sae-fast cache: error: ") and err.count("\n") == 1
        assert expected in err
