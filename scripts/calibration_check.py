"""Which clean scans should a hospital calibrate its detector threshold on? Evidence without the test split.

    python scripts/calibration_check.py --cache .cache/br35h-128.npz [--score background_highpass] [--fpr 0.05]

For each hospital, two ways to set the threshold at the target false-positive rate, each judged on clean scans
of that hospital that the threshold did not see:
  val        its validation scans only; judged on its training scans.
  train+val  all its clean scans; judged by group-wise 5-fold cross-validation (the threshold is set on the
             scans of four folds of near-duplicate groups and judged on the fifth, so no near-copy of a judged
             scan was seen).
Only for a statistic that does not read the trained MAE (training scans are then as unseen as validation ones).
Writes reports/calibration.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medfedpure import detector
from medfedpure.data import load_cache


def model_free_scores(images: np.ndarray, statistic: str) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    # A model-free statistic never reads the reconstruction; the scan stands in for it.
    return detector.anomaly_score(*detector.anomaly_map(x, x, x, statistic)).numpy()


def group_folds(groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Boolean masks of k folds, each a union of whole near-duplicate groups."""
    unique = np.random.default_rng(seed).permutation(np.unique(groups))
    return [np.isin(groups, part) for part in np.array_split(unique, k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=".cache/br35h-128.npz")
    ap.add_argument("--score", default="background_highpass", choices=detector.MODEL_FREE_STATISTICS)
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/calibration.md")
    args = ap.parse_args(argv)

    cache = load_cache(args.cache)
    scores = model_free_scores(cache.images, args.score)
    rows, val_fprs, cv_fprs = [], [], []
    for h in sorted(np.unique(cache.hospital[cache.split != "test"])):
        train = (cache.hospital == h) & (cache.split == "train")
        val = (cache.hospital == h) & (cache.split == "val")
        val_fpr = float((scores[train] > detector.calibrate_threshold(scores[val], args.fpr)).mean())
        mine = train | val
        s, g = scores[mine], cache.group[mine]
        flagged, judged = 0, 0
        for fold in group_folds(g, args.folds, args.seed):
            if fold.all() or not fold.any():
                continue
            thr = detector.calibrate_threshold(s[~fold], args.fpr)
            flagged += int((s[fold] > thr).sum())
            judged += int(fold.sum())
        cv_fpr = flagged / max(judged, 1)
        val_fprs.append(val_fpr)
        cv_fprs.append(cv_fpr)
        rows.append(f"| {h} | {int(val.sum())} ({len(np.unique(cache.group[val]))}) | "
                    f"{int(mine.sum())} ({len(np.unique(g))}) | {100 * val_fpr:.1f}% | {100 * cv_fpr:.1f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Detector calibration: validation scans only, or all of a hospital's clean scans\n\n"
        f"Command: `python scripts/calibration_check.py --cache {args.cache} --score {args.score} --fpr {args.fpr}`;"
        " training and validation scans only (the test split is not read).\n\n"
        f"Target false-positive rate {100 * args.fpr:.0f}%. `val`: threshold set on the hospital's validation scans, "
        f"false positives measured on its training scans. `train+val`: threshold set on all its clean scans, "
        f"false positives measured by group-wise {args.folds}-fold cross-validation.\n\n"
        "| hospital | validation scans (groups) | all clean scans (groups) | FPR, calibrated on val | "
        "FPR, calibrated on train+val (cross-validated) |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n| mean | | | {100 * np.mean(val_fprs):.1f}% | {100 * np.mean(cv_fprs):.1f}% |\n"
        f"| worst | | | {100 * np.max(val_fprs):.1f}% | {100 * np.max(cv_fprs):.1f}% |\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
