"""Personalised mixture vs FedAvg vs local-only, from the runs' own records (final round of each run).

    python scripts/baselines_table.py [--runs pretrained] --out reports/baselines.md

Each hospital evaluates its own model on its own held-out validation scans every round, and on the global test
split at the last round (medfedpure/federated/client_app.py, evaluate); nothing here re-trains or re-scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Where each run's records live: a training folder (runs/) or the released checkpoint folder (pretrained/).
RUNS = {"personalised mixture (MedFedPure, class-balanced loss)": ("classifier",),
        "personalised mixture, unweighted loss": ("unweighted/classifier", "baselines/moe-unweighted"),
        "FedAvg (one global model)": ("fedavg/classifier", "baselines/fedavg"),
        "local only (no federation)": ("local/classifier", "baselines/local")}


def final_round(history: dict) -> tuple[int, list[dict]]:
    rows = [r for r in history["records"] if r["phase"] == "evaluate" and "test-accuracy" in r]
    last = max(r["round"] for r in rows)
    return last, sorted((r for r in rows if r["round"] == last), key=lambda r: r["hospital"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="pretrained", help="runs/ (training output) or pretrained/ (released)")
    ap.add_argument("--out", default="reports/baselines.md")
    args = ap.parse_args()
    lines = ["# Personalised vs FedAvg vs local-only", "",
             f"Command: `python scripts/baselines_table.py --runs {args.runs}`; figures from each run's "
             "`history.json` (final round). Own held-out = each hospital's own validation scans (mean weighted "
             "by scans); test = the global test split, mean over the hospitals' models. Each run's recipe "
             "(rounds x local epochs, class balance, warm start) is in its row.", "",
             "| model | rounds x local epochs | class balance | warm start | own held-out accuracy | "
             "test accuracy (mean) | test accuracy (worst hospital) | test scans | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_hospital = {}
    summary = {}
    for name, subs in RUNS.items():
        path = next((Path(args.runs) / sub / "history.json" for sub in subs
                     if (Path(args.runs) / sub / "history.json").exists()), None)
        if path is None:
            lines.append(f"| {name} | not run | | | | | | | |")
            continue
        history = json.loads(path.read_text())
        rnd, rows = final_round(history)
        n = sum(r["num-examples"] for r in rows)
        own = sum(r["val-accuracy"] * r["num-examples"] for r in rows) / n
        test = [r["test-accuracy"] for r in rows]
        secs = history["summary"]["train_seconds"]
        settings = history["summary"].get("settings", {})
        epochs = settings.get("local-epochs", "?")
        start = settings.get("init-from") or "none"
        lines.append(f"| {name} | {rnd} x {epochs:g} | {settings.get('class-balance', '?')} | {start} | "
                     f"{100 * own:.2f}% | {100 * sum(test) / len(test):.2f}% | {100 * min(test):.2f}% | "
                     f"{rows[0].get('test-n', '?')} | {secs / 60:.1f} min |")
        per_hospital[name] = {r["hospital"]: (r["val-accuracy"], r["test-accuracy"]) for r in rows}
        summary[name] = {"own_heldout_accuracy": own, "test_accuracy_mean": sum(test) / len(test),
                         "test_accuracy_min": min(test), "rounds": rnd, "train_seconds": secs}
    if per_hospital:
        names = list(per_hospital)
        lines += ["", "Per hospital (own held-out / test):", "",
                  "| hospital | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        for h in sorted(next(iter(per_hospital.values()))):
            cells = [f"{100 * per_hospital[m][h][0]:.1f}% / {100 * per_hospital[m][h][1]:.1f}%"
                     if h in per_hospital[m] else "" for m in names]
            lines.append(f"| {h} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
