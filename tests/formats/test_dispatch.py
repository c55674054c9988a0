"""Detection and dispatch over the three formats, and the SparseCoder helpers, on sae_fast-written folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_fast.checkpoint import load_sae, save_sae
from sae_fast.formats import (
    FORMATS,
    SparseCoder,
    architecture_of,
    as_args,
    describe,
    detect,
    read_decoder,
    reconstruct,
    register_with,
    to_sparse,
)
from sae_fast.formats.architectures import ThresholdSAE
from sae_fast.sae import TopKSAE

D, F, K = 8, 24, 3


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_is_detected_and_loads_the_same_sae(tmp_path: Path, fmt: str) -> None:
    sae = TopKSAE(D, F, K, seed=3)
    save_sae(sae, tmp_path / fmt, format=fmt)
    assert detect(tmp_path / fmt) == fmt and describe(tmp_path / fmt) == ("topk", F, D)
    loaded = load_sae(tmp_path / fmt)
    assert isinstance(loaded, TopKSAE) and isinstance(loaded, SparseCoder) and architecture_of(loaded) == "topk"
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)), name
    assert torch.equal(read_decoder(tmp_path / fmt), sae.W_dec.detach())


def test_register_with_hands_over_each_format_in_order() -> None:
    seen: list[tuple[str, object, object]] = []
    register_with(lambda name, detect_fn, read_fn: seen.append((name, detect_fn, read_fn)))
    assert [name for name, _, _ in seen] == list(FORMATS)
    assert all(d is FORMATS[n].detect and r is FORMATS[n].read_decoder for n, d, r in seen)


def test_codes_of_both_kinds_reconstruct_and_densify() -> None:
    g = torch.Generator().manual_seed(0)
    topk = TopKSAE(D, F, K, seed=0)
    relu = ThresholdSAE(torch.randn(F, D, generator=g), torch.randn(F, generator=g), torch.randn(F, D, generator=g),
                        torch.randn(D, generator=g), torch.full((F,), 0.5), torch.zeros(D), architecture="jumprelu")
    x = torch.randn(6, D, generator=g)
    with torch.no_grad():
        values, indices = topk.encode(x)
        dense = to_sparse((values, indices), F).to_dense()
        assert torch.equal(dense.gather(1, indices), values) and int((dense != 0).sum()) <= 6 * K
        torch.testing.assert_close(reconstruct(topk, x), topk.decode(values, indices))
        pre = x @ relu.W_enc.T + relu.b_enc
        expected = pre.relu() * (pre > 0.5)
        code = relu.encode(x)
        assert code.is_sparse and torch.equal(to_sparse(code, F).to_dense(), expected)
        torch.testing.assert_close(relu.decode(*as_args(code)), expected @ relu.W_dec + relu.b_dec)
    assert relu.k is None and isinstance(relu, SparseCoder)
