"""sae_fast.topk: the sort-free exact top-k (ties to the lowest index) against the reference's full sort, and the
CPU encode path built on it."""

import pytest
import torch

from sae_fast import ops, reference, topk
from sae_fast.topk import select_relu_topk_lowest_index, select_topk_lowest_index


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_select_topk_matches_full_sort_with_ties(k) -> None:
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (9, 12), generator=g).float()  # heavy ties, including many zeros
    scores[0] = 0.0
    values, indices = select_topk_lowest_index(scores, k)
    ref_values, ref_indices = reference.topk_lowest_index(scores, k)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
    empty_v, empty_i = select_topk_lowest_index(scores[:0], k)
    assert empty_v.shape == (0, k) and empty_i.dtype == torch.int64
    # rows without ties (torch.topk's choice stands) mixed with tied rows (redone) in one call
    mixed = torch.rand(9, 12, generator=g)
    mixed[::3] = scores[::3]
    values, indices = select_topk_lowest_index(mixed, k)
    ref_values, ref_indices = reference.topk_lowest_index(mixed, k)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)


@pytest.mark.parametrize("dead_frac", [None, 0.0, 0.3])
def test_cpu_encode_equals_the_reference_with_gradients(dead_frac) -> None:
    """ops.encode on CPU (sort-free, sparse backward) gives the reference's indices and AuxK choice exactly, its
    values to fp64 rounding (the pre-activations come from another GEMM call, whose last bits differ on some CPUs,
    e.g. AMD EPYC), and its gradients to fp64 rounding (the sparse backward sums the pairs in another order); b_enc
    makes exact ties, including at zero."""
    g = torch.Generator().manual_seed(11)
    n, d, f, k = 37, 20, 130, 7
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(f, d, generator=g, dtype=torch.float64) / d**0.5
    W[5] = W[9]  # identical latents: exact ties in every row
    b = torch.randn(f, generator=g, dtype=torch.float64) * 0.3 - 1.5  # ~9 positive values per row for k = 7
    b[9] = b[5]
    dead = None if dead_frac is None else torch.rand(f, generator=g) < dead_frac
    outs = []
    for name in ("auto", "reference"):
        params = [t.clone().requires_grad_(True) for t in (x, W, b)]
        with ops.backend(name):
            out = ops.encode(*params, k, dead_mask=dead, k_aux=9)
        loss = (out.values**2).sum() + (0 if out.aux_values is None else out.aux_values.sum())
        loss.backward()
        outs.append((out, [p.grad for p in params]))
    (fast, fast_grads), (ref, ref_grads) = outs
    assert torch.equal(fast.indices, ref.indices)
    torch.testing.assert_close(fast.values, ref.values, rtol=1e-12, atol=1e-12)
    if dead is None:
        assert fast.aux_values is None and ref.aux_values is None
    else:
        assert torch.equal(fast.aux_indices, ref.aux_indices)
        torch.testing.assert_close(fast.aux_values, ref.aux_values, rtol=1e-12, atol=1e-12)
    for a, b_ in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)
    assert bool((fast.values[:, -1] == 0).any())  # some rows end in ReLU zeros


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("k", [1, 4, 9, 12])
def test_relu_topk_equals_the_reference_on_relu_scores(k, native, monkeypatch) -> None:
    """select_relu_topk_lowest_index(s) = reference top-k of relu(s): rows with fewer than k positive values
    (ReLU-zero ties go to the lowest indices, not to the largest negatives), positive ties across the k-th
    place, ties inside the top k, untied rows, and k = M."""
    g = torch.Generator().manual_seed(20 + k)
    scores = torch.randn(10, 12, generator=g)
    scores[0] = -torch.rand(12, generator=g)  # all negative: the answer is indices 0..k-1, all zero
    scores[1, :3] = 2.0  # three positive values, the rest negative
    scores[1, 3:] = -1.0
    scores[2] = torch.randint(0, 3, (12,), generator=g).float()  # ties at 0, 1, 2
    scores[3] = torch.randint(-2, 3, (12,), generator=g).float()  # ties, negatives among them
    scores[4, 5] = scores[4, 9] = float("nan")  # NaN above every number (a NaN weight must be seen)
    scores[5, 2] = float("inf")
    monkeypatch.setattr(topk, "_USE_NATIVE", native)
    for bias in (None, torch.linspace(-0.5, 0.5, 12)):
        for dtype in (torch.float32, torch.float64):
            b = None if bias is None else bias.to(dtype)
            want = scores.to(dtype) if b is None else scores.to(dtype) + b
            values, indices = select_relu_topk_lowest_index(scores.to(dtype), k, b)
            ref_values, ref_indices = reference.topk_lowest_index(want.relu(), k)
            # the NaN row only on the extension's path: the torch path's tie pass (`_select_resolving_ties`)
            # compares with the k-th value and so may drop NaNs from a row with ties
            rows = torch.arange(10) if native else torch.tensor([0, 1, 2, 3, 5, 6, 7, 8, 9])
            values, ref_values = values[rows], ref_values[rows]
            assert torch.equal(indices[rows], ref_indices[rows])
            assert bool(((values == ref_values) | (values.isnan() & ref_values.isnan())).all())
            assert bool((values[~values.isnan()] >= 0).all())
    empty_v, empty_i = select_relu_topk_lowest_index(scores[:0], k)
    assert empty_v.shape == (0, k) and empty_i.dtype == torch.int64
