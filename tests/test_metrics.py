"""Decision metrics and group-bootstrap intervals."""

from __future__ import annotations

import numpy as np

from medfedpure.metrics import binary_metrics, bootstrap_ci, breakdown, format_ci


def test_binary_metrics_by_hand():
    y = [1, 1, 1, 0, 0]
    pred = [1, 0, 1, 0, 1]
    m = binary_metrics(pred, y)
    assert m["sensitivity"] == 2 / 3 and m["specificity"] == 0.5
    assert m["balanced_accuracy"] == (2 / 3 + 0.5) / 2 and m["accuracy"] == 3 / 5
    assert m["n"] == 5 and m["n_tumour"] == 3 and m["n_no_tumour"] == 2
    only_tumours = binary_metrics([1, 0], [1, 1])
    assert only_tumours["specificity"] is None and only_tumours["balanced_accuracy"] == 0.5


def test_group_bootstrap_is_wider_than_slice_bootstrap_for_correlated_errors():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(200), 8)  # 200 patients, 8 slices each, errors made per patient
    y = (g % 2).astype(int)
    right = rng.random(200) < 0.85
    pred = np.where(right[g], y, 1 - y)
    lo_g, hi_g = bootstrap_ci(pred, y, g, "accuracy")
    lo_s, hi_s = bootstrap_ci(pred, y, np.arange(len(y)), "accuracy")
    acc = (pred == y).mean()
    assert lo_g < acc < hi_g and lo_s < acc < hi_s
    assert (hi_g - lo_g) > 2 * (hi_s - lo_s)  # sqrt(8) wider in theory


def test_breakdown_per_source_and_formatting():
    y = np.array([1, 1, 0, 0, 1, 0])
    pred = np.array([1, 1, 0, 1, 1, 0])
    src = np.array(["a", "a", "a", "b", "b", "b"])
    out = breakdown(pred, y, np.arange(6), src, n_boot=200)
    assert set(out) == {"a", "b"} and out["a"]["balanced_accuracy"] == 1.0 and out["b"]["specificity"] == 0.5
    assert format_ci(out["a"], "accuracy").startswith("100.0%")
    assert bootstrap_ci([1], [1], [0]) is None  # one group: no interval
