"""`sae-fast cache`: the default folder names every setting, and an existing cache is never reused blindly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_fast.activations import save_tensor_cache
from sae_fast.cli import build_parser, main
from sae_fast.commands.cache import default_cache_dir


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
