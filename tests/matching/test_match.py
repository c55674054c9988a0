"""match / match_many (sae_fast.matching): backend choice, the public API, input checks, stacked dictionaries."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import sae_fast
import sae_fast.matching as matching
from sae_fast.matching import Match, match, match_many, recall_at_1

from ._helpers import needs_faiss, planted


def test_auto_says_what_it_picked(caplog: pytest.LogCaptureFixture) -> None:
    a, b, _ = planted(128, 16, 0.8)
    with caplog.at_level(logging.INFO, logger="sae_fast.matching"):
        m = match(a, b, device="cpu")
    assert m.info["picked"] == "exact" and "backend='auto' -> exact" in caplog.text
    assert "flop <=" in m.info["picked_reason"]


@needs_faiss
def test_auto_picks_ivf_above_the_size_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _ = planted(2048, 32, 0.8, seed=6)
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 2.0 * 2048 * 2048 * 32 - 1)
    m = match(a, b, both=True, device="cpu")
    assert m.info["picked"] == "faiss" and "IndexIVFFlat" in m.backend and "faiss installed" in m.info["picked_reason"]
    exact = match(a, b, both=True, backend="exact")
    back = Match(m.index_ba, m.cos_ba, None, None, "", info={})
    assert m.info["recall_rows"] == 1000 and abs(m.info["recall_at_1"] - recall_at_1(m, exact)) < 0.05
    assert abs(m.info["recall_at_1_ba"] - recall_at_1(back, Match(exact.index_ba, exact.cos_ba, None, None, ""))) < 0.05
    assert "recall_at_1" not in match(a, b, device="cpu", recall_sample=0).info
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 2.0 * 2048 * 2048 * 32)
    assert match(a, b, device="cpu").info["picked"] == "exact"
    monkeypatch.setattr(matching, "faiss_available", lambda: False)
    monkeypatch.setattr(matching, "AUTO_FAISS_MIN_FLOP", 1.0)
    m = match(a, b, device="cpu")
    assert m.info["picked"] == "exact" and "not installed" in m.info["picked_reason"]
    assert matching.choose_backend("auto", torch.device("cuda"), False, 1e20)[0] == "exact"


def test_package_function_survives_module_import() -> None:
    import sae_fast.matching as module

    a, b, _ = planted(64, 32, 0.9)
    assert isinstance(sae_fast.match(a, b), Match)
    assert sae_fast.match is module.match


def test_numpy_inputs_and_float64() -> None:
    a, b, inv = planted(100, 32, 0.9)
    m = match(a.double().numpy(), np.asarray(b))
    assert torch.equal(m.index_ab[:, 0], inv)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "err", "text"),
    [
        (torch.ones(4, 3), torch.ones(4, 5), {}, ValueError, "same d"),
        (torch.ones(4), torch.ones(4, 5), {}, ValueError, "shape \\(F, d\\)"),
        (torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3), {}, TypeError, "floating point"),
        (torch.tensor([[1.0, 0.0], [math.nan, 1.0]]), torch.ones(2, 2), {}, ValueError, "NaN or inf"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2), {}, ValueError, "zero rows"),
        (torch.ones(4, 3), torch.ones(2, 3), {"k": 3}, ValueError, "k = 3"),
        (torch.ones(4, 3), torch.ones(2, 3), {"backend": "gpu"}, ValueError, "backend must be"),
        ([[1.0]], torch.ones(2, 1), {}, TypeError, "tensor or numpy"),
        (torch.ones(4, 3), torch.ones(4, 3), {"backend": "faiss", "index": "lsh"}, ValueError, "index kind"),
    ],
)
def test_bad_input(a, b, kwargs, err, text) -> None:
    with pytest.raises(err, match=text):
        match(a, b, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"k": 3}, {"block_rows": 64, "block_cols": 100}, {"block_cols": 260, "k": 2},
                                    {"dtype": torch.float16}, {"dtype": torch.bfloat16, "block_cols": 130},
                                    {"absolute": True}], ids=str)
def test_match_many_equals_one_match_per_dictionary(kwargs: dict) -> None:
    """Stacked dictionaries (tiles holding several of them, or pieces of one) give per-dictionary results equal
    to separate calls, both directions, for any tile size and tile dtype."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, 50, generator=g)
    bs = [torch.randn(130, 50, generator=g) for _ in range(5)]
    bs[2][7] = 2 * a[3]
    bs[4][9] = bs[4][8]  # an exact tie: the smaller local index must win
    ms = match_many(a, bs, both=True, **kwargs)
    assert len(ms) == 5 and ms[0].info["dictionaries"] == 5
    for b, m in zip(bs, ms):
        ref = match(a, b, both=True, **kwargs)
        assert torch.equal(m.index_ab, ref.index_ab) and torch.equal(m.index_ba, ref.index_ba)
        torch.testing.assert_close(m.cos_ab, ref.cos_ab, atol=1e-6, rtol=0)
        torch.testing.assert_close(m.cos_ba, ref.cos_ba, atol=1e-6, rtol=0)
    assert int(ms[2].index_ab[3, 0]) == 7
    stacked = torch.nn.functional.normalize(torch.cat(bs), dim=1)
    again = match_many(a, stacked, segment=130, **kwargs)
    assert all(torch.equal(x.index_ab, y.index_ab) for x, y in zip(again, ms))


def test_match_many_bad_input() -> None:
    a = torch.randn(10, 8)
    with pytest.raises(ValueError, match="segment"):
        match_many(a, torch.randn(30, 8), segment=7)
    with pytest.raises(ValueError, match="one shape"):
        match_many(a, [torch.randn(5, 8), torch.randn(6, 8)])
    with pytest.raises(ValueError, match="same d"):
        match_many(a, [torch.randn(5, 9)])
    with pytest.raises(ValueError, match="non-empty"):
        match_many(a, [])
    with pytest.raises(ValueError, match="k = 6"):
        match_many(a, [torch.randn(5, 8)], k=6)
