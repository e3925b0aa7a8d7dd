"""Compare a candidate classifier with the shipped one behind the same defence, on validation scans, by a rule.

    python scripts/compare_classifiers.py --runs runs/val-compare --report reports/adversarial_finetune.md

`--runs` holds four `evaluate --split val` folders: shipped-paper, shipped-8 (the shipped classifier under the
paper's PGD and at 8/255) and cand-paper, cand-8 (the same with `--classifier <candidate>`). The rule is the one
written in the report before the candidate was trained (its "Rule" section); this script appends the
measurement and the verdict under it, replacing an earlier "Measured" section (later sections stay).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RULE_GAIN, CLEAN_DROP, SOURCE_DROP = 0.03, 0.01, 0.02


def _load(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def verdict(runs: dict[str, dict]) -> tuple[list[str], bool]:
    """-> (markdown lines, keep)."""
    rows, checks = [], []
    for budget in ("paper", "8"):
        s, c = runs[f"shipped-{budget}"], runs[f"cand-{budget}"]
        label = "PGD 0.015, 7 steps" if budget == "paper" else "PGD 8/255, 10 steps"
        gain = c["robust_accuracy_defended"]["mean"] - s["robust_accuracy_defended"]["mean"]
        checks.append((f"defended robust, {label}: {100 * gain:+.1f} points (at least +{100 * RULE_GAIN:.0f})",
                       gain >= RULE_GAIN))
        for who, r in (("shipped", s), ("candidate", c)):
            rows.append(f"| {who} | {label} | {r['n']} | {100 * r['clean_accuracy']:.1f}% | "
                        f"{100 * r['clean_accuracy_defended']['mean']:.1f}% | "
                        f"{100 * r['robust_accuracy_undefended']:.1f}% | "
                        f"{100 * r['robust_accuracy_defended']['mean']:.1f} ± "
                        f"{100 * r['robust_accuracy_defended']['std']:.1f}% | {r['detection_auroc']:.3f} | "
                        f"{100 * r['false_positive_rate']:.1f}% | {100 * r['true_positive_rate']:.1f}% |")
    s, c = runs["shipped-paper"], runs["cand-paper"]
    drop = s["clean_accuracy"] - c["clean_accuracy"]
    checks.append((f"clean accuracy: {100 * -drop:+.1f} points (at most -{100 * CLEAN_DROP:.0f})", drop <= CLEAN_DROP))
    source_rows = []
    for src in sorted(s["per_source"]):
        a, b = s["per_source"][src]["accuracy"], c["per_source"].get(src, {}).get("accuracy", 0.0)
        n = s["per_source"][src]["n"]
        source_rows.append(f"| {src} | {n} | {100 * a:.1f}% | {100 * b:.1f}% | {100 * (b - a):+.1f} |")
        checks.append((f"clean accuracy on {src}: {100 * (b - a):+.1f} points (at most -{100 * SOURCE_DROP:.0f})",
                       a - b <= SOURCE_DROP))
    keep = all(ok for _, ok in checks)
    lines = ["| classifier | attack | scans | clean | clean, defended | robust, undefended | robust, defended | "
             "detection AUROC | FPR | TPR |", "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
             "Clean accuracy per source (validation scans, undefended):", "",
             "| source | scans | shipped | candidate | change |", "|---|---|---|---|---|", *source_rows, "",
             "The rule's checks:", ""]
    lines += [f"- {text}: {'pass' if ok else 'FAIL'}" for text, ok in checks]
    lines += ["", f"**By the rule: the candidate {'replaces the shipped classifier' if keep else 'is not kept'}.**"]
    return lines, keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--report", required=True, help="the report whose Rule section was written beforehand")
    ap.add_argument("--command", default="", help="how the candidate was trained (written into the report)")
    args = ap.parse_args()
    runs = {name: _load(Path(args.runs) / name) for name in ("shipped-paper", "shipped-8", "cand-paper", "cand-8")}
    lines, keep = verdict(runs)
    report = Path(args.report)
    text = report.read_text()
    before, _, rest = text.partition("\n## Measured")
    after = rest[rest.find("\n## "):] if "\n## " in rest else ""  # sections written after the measurement stay
    seconds = sum(r["timings_s"]["total"] for r in runs.values())
    header = ["", "## Measured", "",
              f"Commands: `{args.command}`; then `python -m medfedpure evaluate --data ../shared/data --split val "
              "--limit 24 --repeats 2` (and `--eps 8/255 --step 2/255 --steps 10`), each with and without "
              f"`--classifier <candidate>`: {seconds / 60:.0f} min of evaluation on this CPU; then `python "
              f"scripts/compare_classifiers.py --runs <those folders> --report {args.report}`. Defended figures: "
              "mean ± std over two purifier seeds. Per-source figures: the evaluation's own per-source table.", ""]
    report.write_text(before.rstrip() + "\n" + "\n".join(header + lines) + "\n" + after)
    print("\n".join(lines))
    return 0 if keep else 1


if __name__ == "__main__":
    raise SystemExit(main())
