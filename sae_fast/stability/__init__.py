"""Per-feature stability across seeds (method.md §1) and the one-to-one matching variants (§2).

``stability_scores(decoders)`` takes S decoder matrices (F, d) — in memory, or a directory of saved SAEs read
one at a time, memory-mapped and verified — and, for each anchor seed and each of its features, finds the
best-matching feature (largest cosine of unit-normalised decoder rows, many-to-one argmax) in every other seed.
It keeps the evidence, ``best_cos`` and ``best_j`` per (anchor, other seed, feature), so that

    p_hat_i(theta) = #{other seeds k : best_cos[k, i] >= theta} / (S - 1)

and the endpoint split (stable: p_hat >= 1 - eps, unstable: p_hat <= eps) cost nothing for any theta and eps.

Modules: ``result`` (:class:`Stability`, its files, the split and its labels), ``seeds`` (the decoder cache),
``schedule`` (the pair plan), ``options`` and ``resume`` (checks, and what a resumed run must share),
``sweeps`` (computing the pairs), ``run`` (:func:`stability_scores`), ``onetoone`` (Hungarian, mutual NN,
encoder-decoder rule, PW-MCC). Saved SAEs are found and read by :mod:`sae_fast.runs`.
"""

from ..runs import DECODER_KEY, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, find_saved_saes, load_decoder
from .onetoone import encoder_decoder_match, hungarian_argmax_iou, hungarian_match, mutual_nearest_neighbours, pw_mcc
from .result import NEITHER, STABLE, UNSTABLE, Stability, split_labels
from .run import stability_scores
from .schedule import Job, default_stack, plan_jobs
from .seeds import SeedDecoders, default_cache_bytes

__all__ = [
    "DECODER_KEY", "NEITHER", "SAELENS_WEIGHTS", "SPARSIFY_WEIGHTS", "STABLE", "UNSTABLE", "Job", "SeedDecoders",
    "Stability", "default_cache_bytes", "default_stack", "encoder_decoder_match", "find_saved_saes",
    "hungarian_argmax_iou", "hungarian_match", "load_decoder", "mutual_nearest_neighbours", "plan_jobs", "pw_mcc",
    "split_labels", "stability_scores",
]
