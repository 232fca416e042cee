"""Scores of the evaluation: per-class AUROC (no softmax across classes) and percentile bootstrap intervals."""

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


def per_class_auroc(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AUROC of each class column (NaN where a class has only one label value in the set)."""
    return {name: float(a) for name, a in zip(classes, auroc(scores, labels))}


def nanmean(a) -> float:
    """Mean of the finite values (NaN when there is none), without a warning."""
    a = np.asarray(a, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals (resampling records with replacement, seeded) of every class's AUROC and
    of the macro mean (over the classes defined on the full set; a resample where a class has one label value
    leaves it out of that resample's mean)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(scores)
    full = np.isfinite(auroc(scores, labels))
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, scores.shape[1]), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        boot[b] = auroc(scores[idx], labels[idx])
    boot[:, ~full] = np.nan
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per = np.nanpercentile(boot, [lo_q, hi_q], axis=0)
        macro = np.nanmean(boot[:, full], axis=1) if full.any() else np.full(n_boot, np.nan)
        mac = np.nanpercentile(macro, [lo_q, hi_q]) if np.isfinite(macro).any() else [np.nan, np.nan]
    return {"per_class": {c: [float(per[0, k]), float(per[1, k])] for k, c in enumerate(classes)},
            "mean": [float(mac[0]), float(mac[1])], "n_boot": int(n_boot), "level": level, "seed": int(seed)}


def score_set(scores: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 0, seed: int = 0) -> dict:
    """{"per_class", "mean", "undefined", ["ci"]} of scores [N, C] on multi-hot labels [N, C]."""
    auc = auroc(scores, labels)
    out = {"per_class": {c: float(a) for c, a in zip(classes, auc)}, "mean": nanmean(auc),
           "undefined": [c for c, a in zip(classes, auc) if not np.isfinite(a)]}
    if n_boot and len(scores):
        out["ci"] = bootstrap_ci(scores, labels, classes, n_boot=n_boot, seed=seed)
    return out
