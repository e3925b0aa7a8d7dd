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


def test_wilson_interval_by_hand():
    from medfedpure.metrics import wilson_interval

    lo, hi = wilson_interval(7, 16)  # p = 0.4375: centre 0.449, half-width 0.219
    assert round(lo, 3) == 0.231 and round(hi, 3) == 0.668
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.28  # never below 0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] > 0.69


def test_strong_runs_get_a_pooled_count_and_interval():
    from medfedpure.report import headline_markdown, strong_intervals

    def hosp(n, acc):
        return {"n": n, "robust_accuracy_defended": {"mean": acc, "std": 0.0, "values": [acc]}}

    attack = {"label": "adaptive eps=0.015", "per_hospital": {"0": hosp(2, 0.5), "1": hosp(1, 1.0), "2": hosp(1, 0.0)}}
    runs = {"paper": {"attacks": [{**attack, "label": "pgd"}]}, "adaptive-known-seed-32": {"attacks": [attack]},
            "adaptive-strong": {"attacks": [{**attack, "per_hospital": {"0": {
                "n": 2, "robust_accuracy_defended": {"mean": 0.5, "std": 0.1, "values": [0.4, 0.6]}}}}]}}
    lines = strong_intervals(runs)
    # only strong runs; two purifier seeds have no single pooled count, so adaptive-strong is left out
    assert lines == ["- `adaptive-known-seed-32`, adaptive eps=0.015: defended answers right on 2 of 4 pairs pooled "
                     "over hospitals (50.0%, 95% Wilson interval [15.0, 85.0])."]
    assert "Strong adaptive runs, pooled" in headline_markdown({k: v for k, v in runs.items() if k != "paper"})


def test_paired_bootstrap_interval():
    from medfedpure.metrics import paired_bootstrap_interval

    base = np.array([1, 0, 1, 0] * 25)
    assert paired_bootstrap_interval(base, base) == (0.0, 0.0)
    assert paired_bootstrap_interval(np.ones(100), np.zeros(100)) == (1.0, 1.0)
    better = base.copy()
    better[1::4][:10] = 1  # 10 of 100 scans gained, none lost: the interval lies above 0 and holds +0.10
    lo, hi = paired_bootstrap_interval(better, base)
    assert 0 < lo < 0.10 < hi
    assert paired_bootstrap_interval(better, base) == (lo, hi)  # seeded
