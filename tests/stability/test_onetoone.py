"""Tests of sae_fast.stability.onetoone: Hungarian, mutual nearest neighbours, the encoder-decoder rule and
PW-MCC on planted partners."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_fast.stability import (
    encoder_decoder_match,
    hungarian_argmax_iou,
    hungarian_match,
    mutual_nearest_neighbours,
    pw_mcc,
)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def planted_pair(f: int = 300, d: int = 64, frac: float = 0.7, seed: int = 0):
    """B = a permuted copy of A in which the first frac*f features are noisy partners (cos 0.9) and the rest
    are random. Returns A, B, inv (partner in B of each matched row of A)."""
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(f, d, generator=g))
    n = int(frac * f)
    b = unit(torch.randn(f, d, generator=g))
    noise = unit(torch.randn(n, d, generator=g))
    noise = unit(noise - (noise * a[:n]).sum(1, keepdim=True) * a[:n])
    b[:n] = 0.9 * a[:n] + math.sqrt(1 - 0.81) * noise
    perm = torch.randperm(f, generator=g)
    return a, b[perm], torch.argsort(perm), n


def test_hungarian_recovers_planted_partners_and_agrees_with_argmax() -> None:
    a, b, inv, n = planted_pair()
    _rows, cols, cos = hungarian_match(a, b)
    assert np.array_equal(cols[:n], inv[:n].numpy()) and np.allclose(cos[:n], 0.9, atol=1e-5)
    iou = hungarian_argmax_iou(a, b, theta=0.7)
    assert iou == pytest.approx(1.0)
    # lower theta: random rows start to match by argmax but not all by Hungarian -> IoU < 1 but high
    iou_low = hungarian_argmax_iou(a, b, theta=0.3)
    assert 0.7 < iou_low <= 1.0
    with pytest.raises(ValueError, match="max_features"):
        hungarian_match(a, b, max_features=100)


def test_mutual_nn_encoder_decoder_rule_and_pw_mcc() -> None:
    a, b, inv, n = planted_pair(seed=1)
    rows, cols, _cos = mutual_nearest_neighbours(a, b, theta=0.7)
    assert np.array_equal(rows, np.arange(n)) and np.array_equal(cols, inv[:n].numpy())
    # encoders agree with decoders on the first half of the planted features only
    enc_b = b.clone()
    half = n // 2
    enc_b[inv[half:n]] = unit(torch.randn(n - half, a.shape[1], generator=torch.Generator().manual_seed(9)))
    shared, partner, ce, cd = encoder_decoder_match(a, a, enc_b, b, theta=0.7)
    assert np.array_equal(shared, np.arange(half)) and np.array_equal(partner, inv[:half].numpy())
    assert (ce >= 0.7).all() and (cd >= 0.7).all()
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(2))
    assert pw_mcc(a, a[perm] * 3) == pytest.approx(1.0, abs=1e-6)
    mcc = pw_mcc(a, b)
    assert 0.9 * n / a.shape[0] < mcc < 0.9


def test_encoder_decoder_match_checks_shapes() -> None:
    a, b, _inv, _n = planted_pair(seed=1)
    with pytest.raises(ValueError, match=r"pass W_enc\.T"):
        encoder_decoder_match(a.T.contiguous(), a, b, b)
    with pytest.raises(ValueError, match="enc_B and dec_B must both have shape"):
        encoder_decoder_match(a, a, b[:10], b)
    with pytest.raises(ValueError, match="same d"):
        encoder_decoder_match(a, a, b[:, :8], b[:, :8])
