"""Binary decision metrics with confidence intervals that respect how scans are correlated.

Slices of one patient, or copies of one slice, are not independent: a bootstrap over slices would report
intervals far too narrow. `bootstrap_ci` resamples whole groups (duplicate groups or patients) instead.
Label convention: 1 = tumour (positive), 0 = no tumour.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["binary_metrics", "bootstrap_ci", "breakdown", "METRIC_NAMES"]

METRIC_NAMES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")


def _rates(pred: np.ndarray, y: np.ndarray) -> dict:
    pos, neg = y == 1, y == 0
    sens = float((pred[pos] == 1).mean()) if pos.any() else None
    spec = float((pred[neg] == 0).mean()) if neg.any() else None
    present = [v for v in (sens, spec) if v is not None]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "balanced_accuracy": float(np.mean(present)) if present else None,
        "sensitivity": sens,
        "specificity": spec,
    }


def binary_metrics(pred: Sequence[int], y: Sequence[int]) -> dict:
    """Accuracy, balanced accuracy (mean of the recalls of the classes present), sensitivity, specificity."""
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(y, dtype=np.int64)
    return {**_rates(pred, y), "n": int(len(y)), "n_tumour": int((y == 1).sum()), "n_no_tumour": int((y == 0).sum())}


def _group_counts(pred: np.ndarray, y: np.ndarray, groups) -> np.ndarray:
    """(G, 4) per group: true positives, positives, true negatives, negatives."""
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    cols = [(pred == 1) & (y == 1), y == 1, (pred == 0) & (y == 0), y == 0]
    return np.stack([np.bincount(g, weights=c.astype(float), minlength=n_groups) for c in cols], axis=1)


def _from_counts(c: np.ndarray, metric: str) -> np.ndarray:
    """Metric from (..., 4) counts; NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = c[..., 0] / c[..., 1], c[..., 2] / c[..., 3]
        if metric == "sensitivity":
            return sens
        if metric == "specificity":
            return spec
        if metric == "accuracy":
            return (c[..., 0] + c[..., 2]) / (c[..., 1] + c[..., 3])
        with warnings.catch_warnings():  # a resample with one class only: the recall of the class present
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack([sens, spec]), axis=0)


def bootstrap_ci(pred: Sequence[int], y: Sequence[int], groups: Sequence, metric: str = "balanced_accuracy",
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of `metric` over bootstrap resamples of whole groups (with replacement).

    A resample draws G groups out of G; each group brings all its scans. Vectorised: each resample is a vector
    of how often each group was drawn, applied to per-group counts.
    """
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(y, dtype=np.int64)
    counts = _group_counts(pred, y, groups)
    n_groups = len(counts)
    if n_groups < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)  # (B, G)
    values = _from_counts(draws @ counts, metric)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def breakdown(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, by: np.ndarray | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics with group-bootstrap 95% intervals, overall (by=None) or per value of `by` (source, site, view).

    -> {name: {accuracy, balanced_accuracy, sensitivity, specificity, n, ..., "ci": {metric: [lo, hi]}}}
    """
    pred, y, groups = np.asarray(pred), np.asarray(y), np.asarray(groups)
    keys = ["all"] if by is None else sorted(set(np.asarray(by).tolist()))
    out = {}
    for k in keys:
        m = np.ones(len(y), bool) if by is None else np.asarray(by) == k
        rec = binary_metrics(pred[m], y[m])
        rec["groups"] = int(len(np.unique(groups[m])))
        rec["ci"] = {name: (list(ci) if (ci := bootstrap_ci(pred[m], y[m], groups[m], name, n_boot, seed)) else None)
                     for name in METRIC_NAMES if rec[name] is not None}
        out[str(k)] = rec
    return out


def format_ci(rec: dict, metric: str, pct: Callable[[float], str] = lambda v: f"{100 * v:.1f}%") -> str:
    """"93.1% [90.2, 95.6]" from a breakdown record."""
    v = rec.get(metric)
    if v is None:
        return "n/a"
    ci = rec.get("ci", {}).get(metric)
    return pct(v) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (95% by default): honest at small n and near 0 or 1, where
    the normal approximation is not."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def paired_bootstrap_interval(better, base, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval (resampling scans) of mean(better) - mean(base): two per-scan scores of the same
    scans (0/1 correctness, or a mean of several), so the pairing cancels what the scans share."""
    diff = np.asarray(better, dtype=float) - np.asarray(base, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
