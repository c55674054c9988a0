"""Kernel-vs-reference tolerances of the tests, by quantity and dtype: the numbers of docs/tolerances.md.

`Tol(atol, rtol)(scale)` gives assert_close's keywords with atol multiplied by `scale` (GRADS use the reference
gradient's max |entry| as scale). EXACT: inputs whose fp32 sums are exact (small multiples of powers of two), so
the kernels' other summation order changes nothing and indices, values and AuxK compare bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tol(NamedTuple):
    atol: float
    rtol: float

    def __call__(self, scale: float = 1.0) -> dict[str, float]:
        return {"atol": self.atol * scale, "rtol": self.rtol}


EXACT = Tol(0.0, 0.0)

# selected top-k / AuxK values of random (not exact) inputs: fp32 sums of d products in another order; bf16
# inputs against the fp32-accumulated reference of the same inputs
VALUES = {torch.float32: Tol(1e-5, 1e-5), torch.bfloat16: Tol(1e-4, 1e-4)}

# sums of k (decoder, dx) or of the tokens of a latent (dW, db) of O(1) data; the kernels round once to the
# output dtype, the reference computes in fp32
SUMS = {torch.float32: Tol(1e-4, 1e-5), torch.bfloat16: Tol(5e-2, 1e-2)}

# end-to-end gradients through encode + decode (ops / TopKSAE), atol relative to max |reference gradient|:
# in bf16 each path rounds its intermediates (activations, decoded rows, gradients) to bf16 at other points
GRADS = {torch.float32: Tol(1e-5, 1e-4), torch.bfloat16: Tol(2e-2, 2e-2)}

# float64 gradcheck of the reference and the CPU path (torch.autograd.gradcheck's defaults)
GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}
