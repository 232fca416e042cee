"""Scores of the evaluation: per-class AUROC (no softmax across classes) and percentile bootstrap intervals; and
the MELP reference's probe metric (``reference_auroc``: torchmetrics' multilabel macro AUROC on softmax scores).

Two scorings (``SCORINGS``), named in every result they produce:

- "per-class" (ours, the default): AUROC of each class's own score (probe logits, zero-shot cosine), NaN for a class
  with one label value in the set, macro mean over the defined classes.
- "reference" (the reference's linear probe, ``ssl_finetuner.py``): ``AUROC(task="multilabel", average="macro")``
  of torchmetrics 1.6.0 on ``logits.softmax(-1)``. Its per-class value is the trapezoidal area under the ROC curve,
  which is 0.0 (not NaN) for a class without a positive or without a negative (torchmetrics returns a zero TPR / FPR
  there), and the macro mean takes every class that is not NaN: so such a class counts as 0 in the mean.
"""

from __future__ import annotations

import warnings

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-column AUROC [C] of scores [N, C] against multi-hot labels [N, C] (the Mann-Whitney statistic with
    average ranks for ties, equal to sklearn's roc_auc_score); NaN where a column has one label value or a
    non-finite score."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels) > 0
    if scores.shape != y.shape or scores.ndim != 2:
        raise ValueError(f"auroc: scores and labels must both be [N, C], got {scores.shape} and {y.shape}")
    n1 = y.sum(0).astype(np.float64)
    n0 = y.shape[0] - n1
    finite = np.isfinite(scores).all(0)
    if y.shape[0] == 0:
        return np.full(y.shape[1], np.nan)
    ranks = rankdata(np.where(finite[None, :], scores, 0.0), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0) & finite, auc, np.nan)


SCORINGS = ("reference", "per-class")
SCORING_TEXT = {
    "per-class": "per-class AUROC of each class's own score (probe logits / zero-shot cosine), macro mean over the "
                 "classes with both label values in the set",
    "reference": "the MELP reference's probe metric: torchmetrics 1.6.0 AUROC(task='multilabel', average='macro') of "
                 "softmax across classes of the bf16 logits; a class with one label value in the set scores 0 and "
                 "counts in the mean",
}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax across classes in float32, as ``torch.Tensor.softmax(-1)`` computes it (the reference's
    ``logits.softmax(-1)``; under CUDA autocast softmax runs in float32)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).softmax(-1).numpy()


def reference_auroc(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AUROC [C] exactly as torchmetrics 1.6.0 ``multilabel_auroc(..., average="none")`` computes it
    (thresholds=None): scores outside [0, 1] anywhere are passed through a float32 sigmoid first (torchmetrics'
    format step; softmax scores never are); the area under the step ROC curve with tied scores as one threshold
    (equal to the Mann-Whitney statistic with average ranks); 0.0 for a class without a positive or without a
    negative; NaN for a column with a non-finite score or an empty set (where torchmetrics fails)."""
    p = np.asarray(preds, dtype=np.float32)
    y = np.asarray(labels) > 0
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"reference_auroc: preds and labels must both be [N, C], got {p.shape} and {y.shape}")
    if len(p) == 0:
        return np.full(p.shape[1], np.nan)
    if not ((p >= 0) & (p <= 1)).all():
        import torch

        p = torch.from_numpy(np.ascontiguousarray(p)).sigmoid().numpy()
    auc = auroc(p, y)
    n1 = y.sum(0)
    degenerate = (n1 == 0) | (n1 == len(y))
    finite = np.isfinite(p).all(0)
    return np.where(finite, np.where(degenerate, 0.0, auc), np.nan)


def reference_macro(preds: np.ndarray, labels: np.ndarray) -> float:
    """torchmetrics' multilabel macro AUROC: the mean of ``reference_auroc`` over the classes that are not NaN."""
    return nanmean(reference_auroc(preds, labels))


def per_class_auroc(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AUROC of each class column (NaN where a class has only one label value in the set)."""
    return {name: float(a) for name, a in zip(classes, auroc(scores, labels))}


def nanmean(a) -> float:
    """Mean of the finite values (NaN when there is none), without a warning."""
    a = np.asarray(a, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, metric=None) -> dict:
    """Percentile bootstrap intervals (resampling records with replacement, seeded) of every class's AUROC and
    of the macro mean (over the classes defined on the full set; a resample where a class has one label value
    leaves it out of that resample's mean). ``metric``: the per-class function (``auroc``, or ``reference_auroc``)."""
    metric = auroc if metric is None else metric
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(scores)
    full = np.isfinite(metric(scores, labels))
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, scores.shape[1]), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        boot[b] = metric(scores[idx], labels[idx])
    boot[:, ~full] = np.nan
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per = np.nanpercentile(boot, [lo_q, hi_q], axis=0)
        macro = np.nanmean(boot[:, full], axis=1) if full.any() else np.full(n_boot, np.nan)
        mac = np.nanpercentile(macro, [lo_q, hi_q]) if np.isfinite(macro).any() else [np.nan, np.nan]
    return {"per_class": {c: [float(per[0, k]), float(per[1, k])] for k, c in enumerate(classes)},
            "mean": [float(mac[0]), float(mac[1])], "n_boot": int(n_boot), "level": level, "seed": int(seed)}


def score_set(scores: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 0, seed: int = 0,
              scoring: str = "per-class") -> dict:
    """{"per_class", "mean", "undefined", "scoring", ["ci"]} of scores [N, C] on multi-hot labels [N, C].
    ``scoring`` "per-class": ``auroc`` of the scores; "reference": ``reference_auroc`` of the scores as given (the
    caller applies the softmax); "undefined" lists the classes with one label value in the set (NaN per class, or
    scored 0 by the reference metric)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r} (choose from {', '.join(SCORINGS)})")
    y = np.asarray(labels) > 0
    if scoring == "reference":
        auc, metric = reference_auroc(scores, labels), reference_auroc
    else:
        auc, metric = auroc(scores, labels), auroc
    n1 = y.sum(0) if y.ndim == 2 else np.zeros(len(classes))
    one_value = (n1 == 0) | (n1 == len(y))
    out = {"per_class": {c: float(a) for c, a in zip(classes, auc)}, "mean": nanmean(auc), "scoring": scoring,
           "undefined": [c for c, a, d in zip(classes, auc, one_value) if not np.isfinite(a) or d]}
    if n_boot and len(scores):
        out["ci"] = bootstrap_ci(scores, labels, classes, n_boot=n_boot, seed=seed, metric=metric)
    return out
