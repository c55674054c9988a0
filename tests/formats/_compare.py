"""What the real-package tests share: fixed inputs and the encode/decode comparison of our SAE with theirs."""

from __future__ import annotations

from typing import Any

import torch

from sae_fast.formats import as_args, to_sparse


def fixed_inputs(d: int, n: int = 32) -> torch.Tensor:
    """Test inputs, the same whatever ran before (fp32 sums differ from theirs in the last bits only)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 2


def assert_same_outputs(ours: Any, theirs: Any, x: torch.Tensor) -> None:
    """Our sparse code densified equals their encode, and both decodes (and their forward) agree."""
    with torch.no_grad():
        code = ours.encode(x)
        dense_theirs = theirs.encode(x)
        torch.testing.assert_close(to_sparse(code, ours.num_latents).to_dense(), dense_theirs, rtol=1e-4, atol=1e-4)
        assert int((dense_theirs != 0).sum()) > 0, "the test input activates nothing"
        torch.testing.assert_close(ours.decode(*as_args(code)), theirs.decode(dense_theirs), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.decode(*as_args(code)), theirs(x), rtol=1e-4, atol=1e-4)
