"""The one optimizer step of a TopK SAE with its decoder upkeep (Gao et al. 2024; docs/method.md, training).

Every training loop of the project (the multi-seed :class:`~sae_fast.train.Trainer` and the pooled SAE's
:func:`~sae_fast.analysis.pooling.refit`) updates an SAE through :func:`update`: the gradient component parallel
to each decoder row is removed before the step and every decoder row is rescaled to unit norm after it, so the
decoder rows stay unit vectors and the loss cannot shrink them to grow the codes.
"""

from __future__ import annotations

import torch


def update(sae: torch.nn.Module, optimizer: torch.optim.Optimizer, *, lr: float | None = None,
           decoder: bool = True) -> None:
    """One optimizer step of ``sae`` after ``backward()`` (and after any all-reduce of the gradients).

    Parameters
    ----------
    sae:
        A :class:`~sae_fast.sae.TopKSAE` (anything with ``remove_gradient_parallel_to_decoder_directions`` and
        ``set_decoder_norm_to_unit_norm``).
    optimizer:
        The optimizer of its parameters.
    lr:
        When given, every parameter group's learning rate is set to it before the step (warm-up schedules).
    decoder:
        True when ``W_dec`` is trained: the decoder upkeep runs around the step. False when it is frozen
        (nothing to project or renormalise).

    Memory: in place; O(F) scratch for the row norms.
    """
    if decoder:
        sae.remove_gradient_parallel_to_decoder_directions()
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.step()
    if decoder:
        sae.set_decoder_norm_to_unit_norm()
