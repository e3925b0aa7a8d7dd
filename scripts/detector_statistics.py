"""Choose the detector score on VALIDATION scans (never the test split), with the evidence.

    python scripts/detector_statistics.py --classifier runs/multi/classifier --mae runs/cmae/mae \
        --cache .cache/multi2/cache.npz --out reports/detector_statistics

For each hospital's own validation scans it crafts attacks on that hospital's classifier (PGD L-inf at 8/255 and
at the paper's 0.015; with --more also PGD-L2 and CW) and reports, per candidate score, the AUROC of clean against
attacked scans and the detection rate at a 5% false-positive rate, with the threshold set per hospital on its own
clean scores (as the shipped calibration does). Candidates: the MAE's reconstruction error at the scoring mask
ratio, its high-pass part, the classifier's divergence between a scan and its reconstruction (MagNet), the
distance of their trunk features, the MAE-free background statistic, and sums of two of them (each divided by
its median on clean scans). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SINGLE = ("mean_abs_error", "highpass_abs_residual", "magnet_divergence", "feature_error", "background_highpass")
COMBINED = ("mean_abs_error", "magnet_divergence", "feature_error", "background_highpass")


def _attacks(more: bool):
    import torchattacks

    plan = {"PGD 8/255": lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True),
            "PGD 0.015": lambda m: torchattacks.PGD(m, eps=0.015, alpha=0.003, steps=7, random_start=True)}
    if more:
        plan["PGD-L2 1.0"] = lambda m: torchattacks.PGDL2(m, eps=1.0, alpha=0.2, steps=10, random_start=True)
        plan["CW c=1"] = lambda m: torchattacks.CW(m, c=1.0, kappa=0.0, steps=30, lr=0.01)
    return plan


def _scores(mae, keep, clf, x):
    import torch

    from medfedpure import detector

    out = {}
    with torch.no_grad():
        recon, err = detector.reconstruct(mae, x, keep)
        for name in SINGLE:
            if name in detector.CLASSIFIER_STATISTICS:
                out[name] = detector.classifier_score(clf, x, recon, name)
            else:
                amap, region = detector.anomaly_map(x, recon, err, name)
                out[name] = detector.anomaly_score(amap, region)
    return {k: v.numpy() for k, v in out.items()}


def _tpr_at_fpr(clean: dict, adv: dict, name: str, fpr: float = 0.05) -> float:
    from medfedpure.detector import calibrate_threshold

    hits = total = 0
    for h in clean:
        thr = calibrate_threshold(clean[h][name], fpr)
        hits += int((adv[h][name] > thr).sum())
        total += len(adv[h][name])
    return hits / max(total, 1)


def clean_medians(clean: dict) -> dict[str, float]:
    return {n: float(np.median(np.concatenate([clean[h][n] for h in clean]))) or 1e-12 for n in COMBINED}


def choose(results: dict) -> str:
    """The rule, fixed before looking: among the scores that read the MAE and have a map (so the app's map is the
    score that decides), the best mean AUROC over the two PGD L-inf budgets."""
    from medfedpure import detector

    def eligible(name: str) -> bool:
        parts = [p.strip() for p in name.split("+")]
        return (any(p not in detector.MODEL_FREE_STATISTICS for p in parts)
                and not any(p in detector.CLASSIFIER_STATISTICS for p in parts))

    pgd = [a for a in results if a.startswith("PGD ")]
    names = [n for n in results[pgd[0]]["scores"] if eligible(n)]
    return max(names, key=lambda n: np.mean([results[a]["scores"][n]["auroc"] for a in pgd]))


def _add_combined(clean: dict, adv: dict) -> list[str]:
    """Sums of two candidates, each divided by its pooled clean median (the constant a shipped score records)."""
    medians = clean_medians(clean)
    names = []
    for a, b in itertools.combinations(COMBINED, 2):
        name = f"{a} + {b}"
        names.append(name)
        for table in (clean, adv):
            for h in table:
                table[h][name] = table[h][a] / medians[a] + table[h][b] / medians[b]
    return names


def main() -> int:
    import torch

    from medfedpure.data import load_cache
    from medfedpure.evaluation import auroc
    from medfedpure.models.classifier import HospitalClassifier
    from medfedpure.pipeline import load_classifier, load_mae
    from medfedpure import detector

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", default="pretrained/classifier")
    ap.add_argument("--mae", default="pretrained/detector")
    ap.add_argument("--cache", required=True, help="the preprocessed cache of the models' split")
    ap.add_argument("--out", default="reports/detector_statistics")
    ap.add_argument("--per-hospital", type=int, default=24, help="validation scans per hospital (speed)")
    ap.add_argument("--more", action="store_true", help="also PGD-L2 (eps 1.0) and CW (c 1, 30 steps)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clf, gates, _ = load_classifier(Path(args.classifier))
    mae, mae_cfg = load_mae(Path(args.mae))
    clf.eval(), mae.eval()
    ratio = float(mae_cfg.get("score_mask_ratio") or mae.mask_ratio)
    keep = detector.keep_sets_for(mae, int(mae_cfg.get("score_repeats", 1)), 0, mask_ratio=ratio)
    cache = load_cache(args.cache)
    started = time.time()
    results, n_scans, medians = {}, 0, {}
    for attack, make in _attacks(args.more).items():
        clean, adv, flipped = {}, {}, []
        for h, gate in sorted(gates.items()):
            x, y = cache.select(split="val", hospital=h)
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(h))[: args.per_hospital]
            x, y = x[pick], y[pick]
            model = HospitalClassifier(clf, gate).eval()
            xa = make(model)(x, y)
            with torch.no_grad():
                flipped.append((model(xa).argmax(1) != model(x).argmax(1)).float().mean().item())
            clean[h], adv[h] = _scores(mae, keep, model, x), _scores(mae, keep, model, xa)
        n_scans = sum(len(v["mean_abs_error"]) for v in clean.values())
        medians = medians or clean_medians(clean)  # the clean scans are the same for every attack
        names = list(SINGLE) + _add_combined(clean, adv)
        pooled = lambda t, n: np.concatenate([t[h][n] for h in t])  # noqa: E731
        results[attack] = {"flipped": float(np.mean(flipped)), "scores": {
            n: {"auroc": auroc(pooled(clean, n), pooled(adv, n)), "tpr_at_5_fpr": _tpr_at_fpr(clean, adv, n)}
            for n in names}}
        print(attack, f"{time.time() - started:.0f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen = choose(results)
    norms = ",".join(f"{p.strip()}={medians[p.strip()]:.6g}" for p in chosen.split("+")) if "+" in chosen else ""
    meta = {"classifier": args.classifier, "mae": args.mae, "scoring_mask_ratio": ratio, "val_scans": n_scans,
            "seconds": round(time.time() - started), "chosen": chosen, "score_norms": norms,
            "clean_medians": medians}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    attacks = list(results)
    lines = ["# Choosing the detector score (validation scans only)", "",
             f"Command: `python scripts/detector_statistics.py --classifier {args.classifier} --mae {args.mae} "
             f"--cache <cache of the split>{' --more' if args.more else ''}`; {n_scans} validation scans "
             f"({args.per_hospital} per hospital), attacks on each hospital's own classifier, MAE scoring mask "
             f"ratio {ratio}; {meta['seconds']} s on this CPU.", "",
             "Share of scans whose answer the attack changed: "
             + ", ".join(f"{a} {100 * results[a]['flipped']:.0f}%" for a in attacks) + ".", "",
             "| score | " + " | ".join(f"{a} AUROC | {a} TPR@5%" for a in attacks) + " |",
             "|---" * (1 + 2 * len(attacks)) + "|"]
    for name in results[attacks[0]]["scores"]:
        cells = [f"{results[a]['scores'][name]['auroc']:.3f} | {100 * results[a]['scores'][name]['tpr_at_5_fpr']:.0f}%"
                 for a in attacks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "AUROC: clean against attacked validation scans, pooled over hospitals (0.5 = chance). TPR@5%: "
              "attacked scans over their hospital's threshold, set at the 95th percentile of that hospital's clean "
              "scores here. A sum divides each part by its median on these clean scans. `background_highpass` reads "
              "the scan alone (no MAE); the others read the MAE's reconstruction.", "",
              f"**Chosen by the rule fixed beforehand** (the best mean AUROC over the two PGD L-inf budgets among the "
              f"scores that read the MAE and have a map): `{chosen}`"
              + (f", with `score-norms={norms}` (the parts' medians on these clean scans)" if norms else "")
              + ". The test split is never used for the choice."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
