"""The figures of an evaluation: AUROC / ROC, and the typed per-hospital records behind results.json.

`CleanMetrics` (one hospital, its clean scans) and `AttackMetrics` (one hospital, one attack) are the records;
`aggregate` averages them over hospitals field by field, and `record` writes one with `asdict`, so the field
names ARE the keys of results.json. Readers (report, model card) use `CLEAN`, `ATTACK`, `VARIANT` and `REJECT`
(`ATTACK.detection_auroc == "detection_auroc"`) instead of retyping the keys. numpy only: no torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace

import numpy as np

__all__ = ["auroc", "roc_curve", "Spread", "CleanMetrics", "AttackMetrics", "Variant", "DetectAndReject",
           "record", "aggregate", "decision_metrics", "CLEAN", "ATTACK", "VARIANT", "REJECT"]


# --------------------------------------------------------------------------------------------- detection
def _rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank (as scipy.stats.rankdata(method='average'))."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(negatives, positives) -> float | None:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney U statistic / (n_pos n_neg)."""
    neg, pos = np.asarray(negatives, dtype=np.float64).ravel(), np.asarray(positives, dtype=np.float64).ravel()
    if len(neg) == 0 or len(pos) == 0:
        return None
    ranks = _rankdata(np.concatenate([neg, pos]))
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def roc_curve(negatives, positives, max_points: int | None = 201):
    """(fpr, tpr, thresholds) flagging score >= threshold, thresholds descending from +inf."""
    neg, pos = np.sort(np.asarray(negatives, float)), np.sort(np.asarray(positives, float))
    thr = np.r_[np.inf, np.unique(np.concatenate([neg, pos]))[::-1]]
    fpr = 1.0 - np.searchsorted(neg, thr, side="left") / max(len(neg), 1)
    tpr = 1.0 - np.searchsorted(pos, thr, side="left") / max(len(pos), 1)
    if max_points and len(thr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(thr) - 1, max_points).round().astype(int), len(thr) - 1])
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return fpr, tpr, thr


def accuracy(pred, y) -> float | None:
    """Fraction of `pred == y` (torch tensors), None for no scans."""
    return float((pred == y).float().mean()) if len(y) else None


# --------------------------------------------------------------------------------------------- records
@dataclass
class Spread:
    """A defended figure over purifier seeds: mean, std (ddof=1; 0 for one seed) and the per-seed values."""
    mean: float | None
    std: float | None
    values: list[float]

    @classmethod
    def of(cls, values) -> Spread:
        arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
        if arr.size == 0:
            return cls(None, None, [])
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, [float(v) for v in arr])


def _figure(over_hospitals: str | None = "mean", optional: bool = False):
    """A record field. over_hospitals: how `aggregate` combines it (mean, max, or None: not aggregated);
    optional: only computed with some settings (repeats > 1, ablations), left out of the record when absent."""
    meta = {"over_hospitals": over_hospitals, "optional": optional}
    return field(default=None, metadata=meta) if optional else field(metadata=meta)


@dataclass
class CleanMetrics:
    """One hospital's clean scans: undefended and defended accuracy, the detector's false positives."""
    n: int = _figure(None)
    threshold: float = _figure(None)
    clean_accuracy: float | None = _figure()
    clean_accuracy_defended: Spread = _figure()
    false_positive_rate: float = _figure()
    clean_score_mean: float = _figure(None)
    clean_purified_fraction: float = _figure()
    clean_rejection_rate: float = _figure()                    # detect-and-reject: flagged = rejected
    clean_accuracy_on_accepted: float | None = _figure()
    class_counts: dict = _figure(None)
    clean_defended_disagreement: float | None = _figure(optional=True)       # repeats > 1
    always_clean_accuracy_defended: Spread | None = _figure(optional=True)   # ablations: purify every scan
    fixed_t_clean_accuracy_defended: Spread | None = _figure(optional=True)  # ablations: t* = t_max if flagged


@dataclass
class AttackMetrics:
    """One hospital under one attack: robust accuracy without and with the defence, detection."""
    n: int = _figure(None)
    robust_accuracy_undefended: float | None = _figure()
    robust_accuracy_defended: Spread = _figure()
    detection_auroc: float | None = _figure()
    false_positive_rate: float = _figure(None)                 # the clean figure, beside the TPR
    true_positive_rate: float = _figure()
    adversarial_score_mean: float = _figure(None)
    purified_fraction: float = _figure()
    mean_t_star_purified: float | None = _figure()
    attack_success_rate: float = _figure()
    perturbation_linf_max: float = _figure("max")
    perturbation_l2_mean: float = _figure()
    adversarial_rejection_rate: float = _figure()              # detect-and-reject (no purification)
    robust_accuracy_on_accepted: float | None = _figure()
    reject_robust_accuracy: float = _figure()                  # a rejected adversarial scan counts as stopped
    defended_disagreement: float | None = _figure(optional=True)
    always_robust_accuracy_defended: Spread | None = _figure(optional=True)
    fixed_t_robust_accuracy_defended: Spread | None = _figure(optional=True)


@dataclass
class Variant:
    """An ablation row: one variant of the defence, clean and robust accuracy (a figure or a Spread)."""
    clean_accuracy: float | dict | None
    robust_accuracy: float | dict | None


@dataclass
class DetectAndReject:
    """Detect-and-reject without purifying: rejection rates and the accuracy on what is accepted."""
    clean_rejection_rate: float | None
    clean_accuracy_on_accepted: float | None
    adversarial_rejection_rate: float | None
    robust_accuracy_on_accepted: float | None
    robust_accuracy_rejected_counts_as_stopped: float | None


def record(metrics: CleanMetrics | AttackMetrics) -> dict:
    """The results.json form of a record: `asdict`, without the optional figures that were not computed."""
    skip = {f.name for f in fields(metrics) if f.metadata["optional"] and getattr(metrics, f.name) is None}
    return {k: v for k, v in asdict(metrics).items() if k not in skip}


def _mean_over(values: list):
    """Mean over hospitals; Spreads per seed first (macro mean per seed, then mean/std over seeds)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if isinstance(values[0], Spread):
        width = min(len(v.values) for v in values)
        return asdict(Spread.of([np.mean([v.values[r] for v in values]) for r in range(width)]))
    return float(np.mean(values))


def aggregate(kind: type, per_hospital: list) -> dict:
    """The over-hospital figures of `kind`'s records, field by field (optional ones where some hospital has one)."""
    out = {}
    for f in fields(kind):
        how = f.metadata["over_hospitals"]
        values = [getattr(m, f.name) for m in per_hospital]
        present = any(v is not None for v in values) if f.metadata["optional"] else bool(values)
        if how == "max":
            out[f.name] = max((v for v in values if v is not None), default=None)
        elif how is not None and present:
            out[f.name] = _mean_over(values)
    return out


def field_names(kind: type) -> SimpleNamespace:
    """`NAMES.x == "x"` for each field x of `kind`: the result keys, spelt once (a misspelling is an error)."""
    return SimpleNamespace(**{f.name: f.name for f in fields(kind)})


CLEAN, ATTACK = field_names(CleanMetrics), field_names(AttackMetrics)
VARIANT, REJECT = field_names(Variant), field_names(DetectAndReject)


# --------------------------------------------------------------------------------------------- decisions
def decision_metrics(scans, clean_preds: dict[int, tuple], seed: int = 0, n_boot: int = 1000) -> dict:
    """Undefended clean decisions pooled over every (hospital, scan) pair: balanced accuracy, sensitivity,
    specificity, per class and per source, with 95% intervals from a bootstrap over duplicate groups / patients
    (never over slices); tumour-type accuracy on the tumour scans whose type is known.
    clean_preds: hospital -> (scan indices, predictions, tumour-type predictions or None)."""
    from medfedpure.metrics import breakdown

    if not clean_preds:
        return {}
    idx = np.concatenate([v[0] for v in clean_preds.values()])
    pred = np.concatenate([v[1] for v in clean_preds.values()])
    y, groups, source = scans.labels[idx], scans.groups[idx], scans.source[idx].astype(str)
    overall = breakdown(pred, y, groups, None, n_boot, seed)["all"]
    per_source = breakdown(pred, y, groups, source, n_boot, seed) if len(set(source.tolist()) - {""}) else {}
    out = {"balanced_accuracy": overall["balanced_accuracy"], "sensitivity": overall["sensitivity"],
           "specificity": overall["specificity"], "decision": overall, "per_source": per_source,
           "per_class": {"tumour": {"n": overall["n_tumour"], "recall": overall["sensitivity"]},
                         "no_tumour": {"n": overall["n_no_tumour"], "recall": overall["specificity"]}}}
    types = [v[2] for v in clean_preds.values()]
    if all(t is not None for t in types):
        out.update(_tumour_type_metrics(np.concatenate(types), scans.tumour_type[idx]))
    return out


def _tumour_type_metrics(t_pred: np.ndarray, t_true: np.ndarray) -> dict:
    known = t_true >= 0
    out = {"tumour_type_accuracy": float((t_pred[known] == t_true[known]).mean()) if known.any() else None,
           "tumour_type_n": int(known.sum())}
    if known.any():
        from medfedpure.config import TUMOUR_TYPES

        out["tumour_type_per_class"] = {
            name: float((t_pred[known & (t_true == k)] == k).mean())
            for k, name in enumerate(TUMOUR_TYPES) if (known & (t_true == k)).any()}
    return out
