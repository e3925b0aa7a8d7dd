"""Does the classifier work on scans from elsewhere? Per source and site, leave-one-site-out, shortcut checks.

    python scripts/generalisation_report.py --model pretrained --data ../shared/data \
        [--loso runs/loso-HT/classifier:tcga_lgg_flair:HT] [--views reports/views_sample.tsv]

Writes reports/generalisation.md and reports/generalisation.json. Every figure is on the test split of the
model's own split CSV (never used to choose anything), undefended, clean scans; intervals are 95% percentile
bootstraps over duplicate groups / patients (never over slices). The headline pools every hospital's
personalised model on every test scan; the per-hospital table gives each model alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medfedpure.metrics import breakdown, format_ci  # noqa: E402


def _predict(pipe, scans, hospitals, batch=64):
    """Every hospital's answer (and tumour type) on every scan: one trunk pass per batch serves all hospitals."""
    import torch

    base = pipe.classifier_for(hospitals[0]).base
    gates = {h: pipe.classifier_for(h).gate for h in hospitals}
    preds, types = {h: [] for h in hospitals}, {h: [] for h in hospitals}
    x_all = scans.tensor(np.arange(len(scans)))
    with torch.no_grad():
        for i in range(0, len(x_all), batch):
            out = base.under_gates(x_all[i:i + batch].to(pipe.device), gates)
            for h, (logp, t) in out.items():
                preds[h].append(logp.argmax(1).cpu().numpy())
                types[h].append(t.argmax(1).cpu().numpy() if t is not None else np.full(len(logp), -1))
    return ({h: np.concatenate(v) for h, v in preds.items()}, {h: np.concatenate(v) for h, v in types.items()})


def _pooled(scans, preds: dict, key=None):
    hs = sorted(preds)
    pred = np.concatenate([preds[h] for h in hs])
    y = np.tile(scans.labels, len(hs))
    g = np.tile(scans.groups, len(hs))
    by = None if key is None else np.tile(np.asarray(key, dtype=object).astype(str), len(hs))
    return breakdown(pred, y, g, by)


def _restyled(scans, seed=0):
    """Tumour-free test scans with their head's intensities mapped onto a random Nickparvar test scan's."""
    import torch

    from medfedpure.federated.steps import restyle

    src = scans.source.astype(str)
    neg = np.flatnonzero(scans.labels == 0)
    ref = np.flatnonzero(src == "nickparvar_tumour")
    if not len(neg) or not len(ref):
        return None, None
    rng = np.random.default_rng(seed)
    partner = ref[rng.integers(0, len(ref), len(neg))]
    x = torch.cat([scans.tensor(neg), scans.tensor(partner)])  # pairs (i, i + n): restyle i onto its partner
    n = len(neg)
    out = x[:n].clone()
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        pair = torch.stack([x[i], x[n + i]])
        out[i] = restyle(pair, gen, p=1.0)[0]  # in a batch of two, the partner is the other scan
    return neg, out


def main() -> int:
    import torch

    from medfedpure.evaluation import load_scans
    from medfedpure.pipeline import MedFedPure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--split-csv", default=None, help="default: split.csv beside the model")
    p.add_argument("--loso", action="append", default=[], metavar="CLASSIFIER:SOURCE:SITE",
                   help="a classifier trained without that site (its split.csv beside it), tested on the site")
    p.add_argument("--views", default=None, help="TSV (path, view) of hand-labelled test scans")
    p.add_argument("--split", default="test", choices=["val", "test"], help="val: to choose between designs; "
                   "test: to report (default)")
    p.add_argument("--out", default="reports")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    split_csv = Path(args.split_csv) if args.split_csv else Path(pipe.source.path) / "split.csv"
    scans = load_scans(args.data, args.split, split_csv)
    hospitals = pipe.hospitals
    preds, types = _predict(pipe, scans, hospitals)
    out: dict = {"model": str(args.model), "split_csv": split_csv.name, "n_test": len(scans), "split": args.split,
                 "hospitals": hospitals, "bootstrap": "95% percentile, 1000 resamples of duplicate groups / patients"}
    out["overall"] = _pooled(scans, preds)["all"]
    out["per_source"] = _pooled(scans, preds, scans.source)
    src_only = np.array([s.split(":")[0] for s in scans.source.astype(str)], dtype=object)
    out["per_dataset"] = _pooled(scans, preds, src_only)
    from medfedpure.metrics import binary_metrics

    out["per_hospital"] = {str(h): binary_metrics(preds[h], scans.labels) for h in hospitals}
    # tumour type, on test scans whose source names it
    known = scans.tumour_type >= 0
    if known.any() and all((types[h] >= 0).any() for h in hospitals):
        tp = np.concatenate([types[h][known] for h in hospitals])
        tt = np.tile(scans.tumour_type[known], len(hospitals))
        tg = np.tile(scans.groups[known], len(hospitals))
        acc = float((tp == tt).mean())
        from medfedpure.metrics import bootstrap_ci

        ci = bootstrap_ci((tp == tt).astype(int), np.ones(len(tt), int), tg, "sensitivity")
        out["tumour_type"] = {"accuracy": acc, "ci": list(ci), "n_scans": int(known.sum())}
    # shortcut 1: tumour-free scans restyled to the tumour-only source's intensity histogram
    neg, restyled = _restyled(scans)
    if neg is not None:
        with torch.no_grad():
            spec_before = {h: float((preds[h][neg] == 0).mean()) for h in hospitals}
            spec_after = {h: float((pipe.classifier_for(h)(restyled).argmax(1).numpy() == 0).mean()) for h in hospitals}
        out["restyle_check"] = {"n": int(len(neg)), "specificity_before": float(np.mean(list(spec_before.values()))),
                                "specificity_restyled": float(np.mean(list(spec_after.values())))}
        import PIL.Image

        grid = np.concatenate([np.concatenate(list(scans.tensor(neg[:8])[:, 0].numpy()), 1),
                               np.concatenate(list(restyled[:8, 0].numpy()), 1)], 0)
        PIL.Image.fromarray((grid * 255).astype(np.uint8)).save(Path(args.out) / "generalisation_restyled.png")
    # shortcut 2: per plane: volume slices know theirs (`<file>#<plane>=<index>`), a hand-labelled sample the rest
    view = {}
    if args.views and Path(args.views).is_file():
        view = {r["path"]: r["view"] for r in csv.DictReader(open(args.views), delimiter="\t")}
    src_names = scans.source.astype(str)
    vk = np.array([(f"{src.split(':')[0]}:{n.partition('#')[2].partition('=')[0]}" if "#" in n else
                    (f"{src.split(':')[0]}:{view[n]}" if n in view else "")) for n, src in zip(scans.names, src_names)],
                  dtype=object)
    m = vk != ""
    if m.any():
        hs = sorted(preds)
        pred = np.concatenate([preds[h][m] for h in hs])
        out["per_view"] = breakdown(pred, np.tile(scans.labels[m], len(hs)), np.tile(scans.groups[m], len(hs)),
                                    np.tile(vk[m].astype(str), len(hs)))
    # leave-one-site-out
    out["leave_one_site_out"] = {}
    for spec in args.loso:
        folder, source, site = spec.rsplit(":", 2)
        from medfedpure.pipeline import load_classifier

        clf, gates, _ = load_classifier(Path(folder))
        held = load_scans(args.data, "test", Path(folder) / "split.csv")
        m = held.source.astype(str) == f"{source}:{site}"
        from medfedpure.models.classifier import HospitalClassifier

        res = {}
        with torch.no_grad():
            x = held.tensor(np.flatnonzero(m))
            ph = {h: HospitalClassifier(clf.eval(), g.eval())(x).argmax(1).numpy() for h, g in gates.items()}
        hs = sorted(ph)
        res = breakdown(np.concatenate([ph[h] for h in hs]), np.tile(held.labels[m], len(hs)),
                        np.tile(held.groups[m], len(hs)))["all"]
        res["hospitals"] = hs
        out["leave_one_site_out"][f"{source}:{site}"] = res
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "generalisation.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    (Path(args.out) / "generalisation.md").write_text(render(out, args))
    print((Path(args.out) / "generalisation.md").read_text())
    return 0


def _row(name: str, rec: dict) -> str:
    return (f"| {name} | {rec['n']} | {rec['groups']} | {format_ci(rec, 'accuracy')} | "
            f"{format_ci(rec, 'balanced_accuracy')} | {format_ci(rec, 'sensitivity')} | "
            f"{format_ci(rec, 'specificity')} |")


def render(out: dict, args) -> str:
    head = "| Scans | n | groups | Accuracy | Balanced accuracy | Sensitivity | Specificity |\n|---|---|---|---|---|---|---|"
    lines = ["# Generalisation across sources and sites", "",
             f"Command: `python scripts/generalisation_report.py --model {args.model} --data {args.data}"
             + "".join(f" --loso {x}" for x in args.loso) + (f" --views {args.views}" if args.views else "")
             + (f" --split {args.split}" if args.split != "test" else "") + f" --out {args.out}`", "",
             f"{out.get('split', 'test').capitalize()} split of `{out['split_csv']}` ({out['n_test']} scans), clean and undefended; every hospital's "
             f"personalised model ({len(out['hospitals'])}) on every test scan, pooled. 95% intervals: bootstrap over "
             "duplicate groups / patients (1000 resamples). n counts (model, scan) pairs; groups counts distinct "
             "groups.", "", "## All sources together and per source / site", "", head,
             _row("all test scans", out["overall"])]
    lines += [_row(k, v) for k, v in out["per_dataset"].items()]
    lines += [_row(k, v) for k, v in out["per_source"].items() if ":" in k]
    if out.get("tumour_type"):
        t = out["tumour_type"]
        lines += ["", f"**Tumour type** (test scans whose source names it: {t['n_scans']} Nickparvar scans): accuracy "
                      f"{100 * t['accuracy']:.1f}% [{100 * t['ci'][0]:.1f}, {100 * t['ci'][1]:.1f}]."]
    lines += ["", "## Each hospital's model on all test scans", "", "| Hospital | Accuracy | Balanced accuracy | "
              "Sensitivity | Specificity |", "|---|---|---|---|---|"]
    for h, r in out["per_hospital"].items():
        lines.append(f"| {h} | {100 * r['accuracy']:.1f}% | {100 * r['balanced_accuracy']:.1f}% | "
                     f"{100 * r['sensitivity']:.1f}% | {100 * r['specificity']:.1f}% |")
    if out["leave_one_site_out"]:
        lines += ["", "## Leave one site out", "", "Trained without the site (its scans all in test, no hospital); "
                  "tested on it.", "", head]
        lines += [_row(k, v) for k, v in out["leave_one_site_out"].items()]
    if out.get("restyle_check"):
        r = out["restyle_check"]
        lines += ["", "## Shortcut checks", "",
                  f"- **Restyled tumour-free scans.** The {r['n']} tumour-free test scans, their head's intensities "
                  f"mapped onto a random `nickparvar_tumour` test scan's histogram (the tumour-only source's look): "
                  f"specificity {100 * r['specificity_before']:.1f}% as they are, "
                  f"{100 * r['specificity_restyled']:.1f}% restyled (mean over the hospitals' models). "
                  "Examples: `reports/generalisation_restyled.png` (top: as they are, bottom: restyled)."]
    if out.get("per_view"):
        lines += ["- **Per plane** (volume slices by their plane; other sources by a hand-labelled sample):", "", head]
        lines += [_row(k, v) for k, v in out["per_view"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
