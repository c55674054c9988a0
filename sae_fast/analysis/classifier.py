"""Stability classifier from decoder geometry (method.md §4.3).

A logistic regression on unit decoder rows is trained on seed a's stable/unstable labels (a as anchor) and
tested on every other seed b with b's own labels (b as anchor); features in neither endpoint are left out.
Reported per (a, b): F1 of each class, balanced accuracy and the majority-class baseline (accuracy and
balanced accuracy of always predicting seed a's majority class). The paper reports F1 ≈ 0.67–0.73 ([S1];
which class is positive is unconfirmed, so both are given). An extra baseline thresholds the projection
energy ``||V_a^T d||^2`` onto the top-r subspace of seed a's unstable decoders.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from ._common import STABLE, UNSTABLE, ArrayLike, check_decoders, right_singular


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    return {
        "f1_stable": float(f1_score(y_true, y_pred, pos_label=1, zero_division=0)),
        "f1_unstable": float(f1_score(y_true, y_pred, pos_label=0, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "accuracy": float((y_true == y_pred).mean()),
    }


class ClassifierPair(TypedDict):
    """One (train, test) seed pair (the intervals and the verdict resample them); other scores may follow."""

    train: int
    test: int
    f1_stable: float | None
    f1_unstable: float | None
    balanced_accuracy: float | None


class ClassifierResult(TypedDict):
    """:func:`cross_seed_classifier`; ``mean``: every score of the pairs averaged over them, by name (empty when
    no training seed had both classes, so no pair was scored)."""

    pairs: list[ClassifierPair]
    mean: dict[str, float | None]
    C: float
    class_weight: str | None


def cross_seed_classifier(
    decoders: list[ArrayLike],
    labels: list[ArrayLike],
    *,
    C: float = 1.0,
    class_weight: str | None = "balanced",
    projection_rank: int = 16,
    max_pairs: int | None = None,
    seed: int = 0,
) -> ClassifierResult:
    """Train on each seed, test on every other; ``labels[s]`` (F_s,) in the STABLE/UNSTABLE/NEITHER coding.

    Returns ``{"pairs": [per (train, test) dicts], "mean": {metric: mean over pairs}}``; a seed whose labels
    hold fewer than 2 examples of either class is skipped as a training seed.
    """
    from sklearn.linear_model import LogisticRegression

    decs = check_decoders(decoders)
    S = len(decs)
    if len(labels) != S:
        raise ValueError(f"labels must hold one array per seed ({S}), got {len(labels)}")
    labs = [np.asarray(lab).reshape(-1) for lab in labels]
    for s in range(S):
        if labs[s].shape[0] != decs[s].shape[0]:
            raise ValueError(f"labels[{s}] has {labs[s].shape[0]} entries, decoders[{s}] {decs[s].shape[0]} rows")
    data = []
    for s in range(S):
        keep = (labs[s] == STABLE) | (labs[s] == UNSTABLE)
        data.append((decs[s][keep], (labs[s][keep] == STABLE).astype(np.int64), decs[s][labs[s] == UNSTABLE]))
    pairs = [(a, b) for a in range(S) for b in range(S) if a != b]
    if max_pairs is not None and len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs, replace=False))]
    rows = []
    models: dict[int, object] = {}
    for a, b in pairs:
        xa, ya, ua = data[a]
        xb, yb, _ = data[b]
        if min(ya.sum(), (1 - ya).sum()) < 2 or len(yb) == 0:
            continue
        if a not in models:
            models[a] = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000).fit(xa, ya)
        pred = models[a].predict(xb)
        row = {"train": a, "test": b, "n_train": len(ya), "n_test": len(yb),
               "test_share_stable": float(yb.mean()), **_scores(yb, pred)}
        majority = int(ya.mean() >= 0.5)
        row["majority_accuracy"] = float((yb == majority).mean())
        row["majority_balanced_accuracy"] = 0.5
        # projection-energy baseline: unstable if much of d lies in seed a's top-r unstable subspace
        r = min(projection_rank, len(ua), xa.shape[1])
        if r >= 1:
            basis = right_singular(ua)[1][:, :r]
            ea = ((xa @ basis) ** 2).sum(axis=1)
            eb = ((xb @ basis) ** 2).sum(axis=1)
            candidates = np.unique(np.quantile(ea, np.linspace(0.0, 1.0, 201)))
            accs = [0.5 * ((ea[ya == 1] < t).mean() + (ea[ya == 0] >= t).mean()) for t in candidates]
            t_best = candidates[int(np.argmax(accs))]
            proj = _scores(yb, (eb < t_best).astype(np.int64))
            row["projection_balanced_accuracy"] = proj["balanced_accuracy"]
            row["projection_f1_stable"] = proj["f1_stable"]
            row["projection_f1_unstable"] = proj["f1_unstable"]
        rows.append(row)
    keys = [k for k in (rows[0] if rows else {}) if k not in ("train", "test", "n_train", "n_test")]
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    return {"pairs": rows, "mean": mean, "C": C, "class_weight": class_weight}
