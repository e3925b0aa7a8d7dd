"""Markdown and figures from `evaluate` results: RESULTS.md per run, and the full reports/REPORT.md.

    python -m medfedpure.report --runs reports/runs --out reports [--round-plot runs/classifier/accuracy_per_round.png]

`scripts/make_report.sh` runs the evaluations into ``<out>/runs/<name>/`` and then this module. Run names it
knows (each optional except ``paper``):
  paper         PGD L-inf eps=0.015, step 0.003, 7 steps on the classifier (the paper's protocol)
  ablations     the same attack with the ablations (purify every scan, fixed t*, detect-and-reject)
  pgd-8-255     PGD L-inf eps=8/255, step 2/255, 10 steps, ablations
  attacks       other attacks (FGSM, PGD-L2, CW) on the classifier
  sweep         PGD at several eps (robust accuracy vs eps, undefended and defended)
  adaptive      adaptive attack through the whole defence at the paper's budget
  adaptive-sweep adaptive attack at several eps
  adaptive-bpda adaptive attack with BPDA gradients instead of full back-propagation
  transfer      PGD crafted on the FedAvg baseline, evaluated on MedFedPure
  fedavg        the paper protocol with the FedAvg classifier in place of the personalised one
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

from medfedpure.evaluation.metrics import ATTACK, CLEAN, REJECT, VARIANT

# The paper's Table 2 (Karami et al., arXiv 2511.11625), Br35H, PGD L-inf eps=0.015, 7 steps, step 0.003.
PAPER = {"clean_accuracy": 0.9767, "robust_accuracy_undefended": 0.4950, "robust_accuracy_defended": 0.8733}

RUN_NAMES = ("paper", "ablations", "pgd-8-255", "attacks", "sweep", "adaptive", "adaptive-sweep", "adaptive-bpda",
             "adaptive-strong", "adaptive-known-seed", "transfer", "fedavg")
STRONG_RUNS = ("adaptive-strong", "adaptive-known-seed")  # their documented subsets are named <run>-<n scans>
# The README's table: the paper's protocol, 8/255, the other attacks (detection beyond L-inf), the adaptive and
# strong adaptive attacks (and their documented subsets, e.g. adaptive-known-seed-16), the transfer attack.
HEADLINE_RUNS = ("paper", "pgd-8-255", "attacks", "adaptive", "adaptive-bpda", *STRONG_RUNS, "transfer")


# --------------------------------------------------------------------------------------------- formatting
def pct(value, digits: int = 1) -> str:
    """0.8733 -> '87.3%'; {'mean','std'} -> '87.3 ± 0.4%'; None -> '–'."""
    if value is None:
        return "–"
    if isinstance(value, dict):
        if value.get("mean") is None:
            return "–"
        if len(value.get("values", [])) > 1:
            return f"{100 * value['mean']:.{digits}f} ± {100 * value['std']:.{digits}f}%"
        return f"{100 * value['mean']:.{digits}f}%"
    return f"{100 * value:.{digits}f}%"


def num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean(value):
    if isinstance(value, dict):
        return value.get("mean")
    return value


def _std(value):
    return value.get("std") if isinstance(value, dict) else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _setting_text(results: dict) -> str:
    s = results.get("settings", {})
    d = results.get("data", {})
    bits = [f"split `{d.get('split')}`", f"{results.get('n')} scans",
            f"{results.get('n_pairs')} (scan, hospital) pairs ({results.get('pairs')})",
            f"hospitals {results.get('hospitals')}",
            f"purifier seeds {results.get('seeds', {}).get('purifier')}", f"purify `{s.get('purify')}`"]
    if d.get("limit"):
        bits.append(f"seeded class-stratified subset (--limit {d['limit']} of {d.get('n_available')})")
    return ", ".join(bits)


# --------------------------------------------------------------------------------------------- RESULTS.md
def results_markdown(results: dict) -> str:
    """The RESULTS.md of one `evaluate` run."""
    out = ["# MedFedPure evaluation\n"]
    model = results.get("model", {})
    out.append(f"Model: {model.get('description')}" + (f"; classifier swapped for `{model['classifier_source']}`"
                                                      if model.get("classifier_source") else "") + "  ")
    out.append(f"Data: {_setting_text(results)}.  ")
    defence = results.get("defence", {})
    out.append(f"Defence: MAE score `{defence.get('score')}`, per-hospital thresholds (target FPR "
               f"{defence.get('target_fpr')}), t* in [{defence.get('t_min')}, {defence.get('t_max')}], "
               f"{defence.get('ddim_steps')} DDIM steps.\n")
    out.append("Figures are means over hospitals; defended figures are mean ± std over purifier seeds.\n")
    rows = [["No defence", pct(results.get(CLEAN.clean_accuracy))]]
    rows.append([f"MedFedPure (purify {defence.get('purify')})", pct(results.get(CLEAN.clean_accuracy_defended))])
    attacks = results.get("attacks", [])
    out.append("## Clean\n")
    clean = results.get("clean", {})
    out.append(_table(["", "Clean accuracy"], rows))
    out.append(f"\nFalse-positive rate (clean scans flagged): {pct(clean.get(CLEAN.false_positive_rate))}.\n")
    if attacks:
        out.append("## Attacks\n")
        rows = []
        for a in attacks:
            rows.append([a["label"], a.get("target", ""), pct(a.get(ATTACK.robust_accuracy_undefended)),
                         pct(a.get(ATTACK.robust_accuracy_defended)), num(a.get(ATTACK.detection_auroc)),
                         pct(a.get(ATTACK.true_positive_rate)), pct(a.get(ATTACK.purified_fraction)),
                         num(a.get(ATTACK.perturbation_linf_max), 4), num(a.get(ATTACK.perturbation_l2_mean), 3)])
        out.append(_table(["Attack", "Sees", "Robust acc. undefended", "Robust acc. defended", "Detection AUROC",
                           "TPR (flagged)", "Purified", "max L-inf", "mean L2"], rows))
        ab = results.get("ablations", {})
        out.append(f"\n## Ablations ({attacks[0]['label']})\n")
        rows = []
        for key, val in ab.items():
            if not isinstance(val, dict) or key == "detect_and_reject":
                continue
            rows.append([key.replace("_", " "), pct(val.get(VARIANT.clean_accuracy)),
                         pct(val.get(VARIANT.robust_accuracy))])
        out.append(_table(["Variant", "Clean accuracy", "Robust accuracy"], rows))
        rej = ab.get("detect_and_reject", {})
        out.append(
            "\nDetect and reject (no purification): clean rejection rate "
            f"{pct(rej.get(REJECT.clean_rejection_rate))}, accuracy on accepted clean scans "
            f"{pct(rej.get(REJECT.clean_accuracy_on_accepted))}; adversarial rejection rate "
            f"{pct(rej.get(REJECT.adversarial_rejection_rate))}, accuracy on accepted adversarial scans "
            f"{pct(rej.get(REJECT.robust_accuracy_on_accepted))}, robust accuracy counting a rejected scan as "
            f"stopped {pct(rej.get(REJECT.robust_accuracy_rejected_counts_as_stopped))}.\n")
    per_h = results.get("per_hospital", {})
    if per_h:
        out.append("\n## Per hospital\n")
        rows = [[h, d.get(CLEAN.n), num(d.get(CLEAN.threshold), 4), pct(d.get(CLEAN.clean_accuracy)),
                 pct(d.get(CLEAN.clean_accuracy_defended)), pct(d.get(ATTACK.robust_accuracy_undefended)),
                 pct(d.get(ATTACK.robust_accuracy_defended)), num(d.get(ATTACK.detection_auroc)),
                 pct(d.get(CLEAN.false_positive_rate)), pct(d.get(ATTACK.true_positive_rate))]
                for h, d in per_h.items()]
        out.append(_table(["Hospital", "n", "Threshold", "Clean", "Clean defended", "Robust undefended",
                           "Robust defended", "AUROC", "FPR", "TPR"], rows))
    env = results.get("environment", {})
    git = results.get("git", {})
    pk = env.get("packages", {})
    out.append("\n## Provenance\n")
    out.append(f"git commit {git.get('commit') or 'unknown'}" + (" (uncommitted changes)" if git.get("dirty") else "")
               + f"; {results.get('created_utc')}; device {env.get('device')} ({env.get('torch_threads')} threads); "
               + ", ".join(f"{k} {v}" for k, v in pk.items() if v) + f"; Python {env.get('python')}.  ")
    out.append(f"Wall time {results.get('timings_s', {}).get('total')} s "
               f"({results.get('seconds_per_pair')} s per pair, {results.get('purifications')} purifications).\n")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(runs: dict, path: Path) -> Path | None:
    curves = []
    for name in ("paper", "pgd-8-255", "adaptive"):
        res = runs.get(name)
        if res and res.get("attacks"):
            a = res["attacks"][0]
            curves.append((f"{a['label']} ({name}), AUROC {num(a.get('detection_auroc_pooled'))}", a))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, a in curves:
        line, = ax.plot(a["roc"]["fpr"], a["roc"]["tpr"], label=label)
        pts = list(a["roc"].get("operating_points", {}).values())
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=line.get_color(), zorder=3)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (clean scans flagged)")
    ax.set_ylabel("true-positive rate (adversarial scans flagged)")
    ax.set_title("MAE detector ROC (dots: per-hospital thresholds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eps_series(results: list[dict | None], key: str):
    """(eps, mean, std) over the attacks of one or more runs (a later run's point wins at equal eps), with the
    first run's clean figure at eps = 0."""
    results = [r for r in results if r]
    if not results:
        return [], [], []
    pts = {}
    for res in results:
        for a in res.get("attacks", []):
            if a.get("eps") is not None and _mean(a.get(key)) is not None:
                pts[round(a["eps"], 6)] = (a["eps"], _mean(a.get(key)), _std(a.get(key)))
    pts = sorted(pts.values(), key=lambda t: t[0])
    res = results[0]
    undefended = key == ATTACK.robust_accuracy_undefended
    clean = res.get(CLEAN.clean_accuracy) if undefended else _mean(res.get(CLEAN.clean_accuracy_defended))
    if pts and clean is not None:
        cstd = None if undefended else _std(res.get(CLEAN.clean_accuracy_defended))
        pts = [(0.0, clean, cstd)] + pts
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] or 0.0 for p in pts]


def plot_robust_vs_eps(runs: dict, path: Path) -> Path | None:
    series = []
    sweep = [runs.get("sweep")]
    series.append(("undefended (PGD on classifier)", *_eps_series(sweep, ATTACK.robust_accuracy_undefended), "o-"))
    series.append(("MedFedPure (PGD on classifier)", *_eps_series(sweep, ATTACK.robust_accuracy_defended), "s-"))
    adaptive = [runs.get("adaptive-sweep"), runs.get("adaptive")]
    series.append(("MedFedPure (adaptive attack)", *_eps_series(adaptive, ATTACK.robust_accuracy_defended), "^-"))
    series.append(("undefended (adaptive attack)", *_eps_series(adaptive, ATTACK.robust_accuracy_undefended), "v:"))
    series = [s for s in series if s[1]]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xs, ys, es, style in series:
        ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], fmt=style, capsize=3, label=label, ms=4)
    for e, name in ((0.015, "0.015"), (8 / 255, "8/255")):
        ax.axvline(e, color="grey", lw=0.6, ls=":")
        ax.text(e, 98, name, fontsize=7, rotation=90, va="top", ha="right", color="grey")
    ax.set_xlabel("L-inf eps (pixel scale [0, 1])")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Robust accuracy vs attack budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_hospital(res: dict, path: Path) -> Path | None:
    per_h = res.get("per_hospital", {}) if res else {}
    if not per_h:
        return None
    plt = _plt()
    hs = list(per_h)
    keys = [(CLEAN.clean_accuracy, "clean"), (CLEAN.clean_accuracy_defended, "clean, defended"),
            (ATTACK.robust_accuracy_undefended, "PGD, undefended"),
            (ATTACK.robust_accuracy_defended, "PGD, defended")]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(hs) + 2), 4))
    for k, (key, label) in enumerate(keys):
        vals = [_mean(per_h[h].get(key)) for h in hs]
        errs = [_std(per_h[h].get(key)) or 0.0 for h in hs]
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(hs))]
        ax.bar(xs, [100 * (v or 0) for v in vals], width, yerr=[100 * e for e in errs], label=label, capsize=2)
    ax.set_xticks(range(len(hs)), [f"H{h}" for h in hs])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    a = res.get("attacks", [{}])[0]
    ax.set_title(f"Per-hospital accuracy ({a.get('label', '')}, personalised models)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- REPORT.md
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_runs(runs_dir: Path) -> dict:
    """Every run folder with a results.json: the known runs in their order, then any other (e.g. a documented
    subset of a strong run, `adaptive-known-seed-16`) by name."""
    runs = {}
    known = [Path(runs_dir) / name for name in RUN_NAMES]
    others = sorted(p for p in Path(runs_dir).glob("*") if p.is_dir() and p.name not in RUN_NAMES)
    for folder in known + others:
        path = folder / "results.json"
        if path.is_file():
            runs[folder.name] = json.loads(path.read_text())
    return runs


def _is_strong(name: str) -> bool:
    """A strong adaptive run or one of its documented subsets (`<run>-<n scans>`)."""
    return any(name == s or name.startswith(f"{s}-") for s in STRONG_RUNS)


def _in_headline(name: str) -> bool:
    return name in HEADLINE_RUNS or _is_strong(name)


def _row(name: str, res: dict | None, attack_index: int = 0) -> list[str] | None:
    if not res or not res.get("attacks"):
        return None
    a = res["attacks"][attack_index]
    return [name, a["label"], a.get("target", ""), f"{res.get('n_pairs')} ({res.get('n')} scans)",
            pct(res.get(CLEAN.clean_accuracy)), pct(res.get(CLEAN.clean_accuracy_defended)),
            pct(a.get(ATTACK.robust_accuracy_undefended)), pct(a.get(ATTACK.robust_accuracy_defended)),
            num(a.get(ATTACK.detection_auroc)), pct(res.get(CLEAN.false_positive_rate)),
            pct(a.get(ATTACK.true_positive_rate))]


def report_markdown(runs: dict, figures: dict, wall_time: float | None = None, round_plot: str | None = None,
                    machine_note: str | None = None) -> str:
    paper = runs.get("paper", {})
    out = ["# MedFedPure: evaluation report\n",
           "Generated by `scripts/make_report.sh` (evaluations with `python -m medfedpure evaluate`, then "
           "`python -m medfedpure.report`). Every figure is a mean over the hospitals' personalised models; defended "
           "figures are mean ± std over purifier seeds. Per-run details (settings, seeds, per-hospital figures, "
           "versions, timings) are in `runs/<name>/results.json` and `RESULTS.md`.\n"]
    if paper:
        model = paper.get("model", {})
        out.append(f"Model: {model.get('description')}. Data: {_setting_text(paper)}.\n")
        out.append("## Against the paper (Table 2: Br35H, PGD L-inf eps = 0.015, 7 steps, step 0.003)\n")
        a = paper["attacks"][0] if paper.get("attacks") else {}
        rows = [["Clean accuracy", pct(PAPER["clean_accuracy"], 2), pct(paper.get(CLEAN.clean_accuracy)),
                 pct(paper.get(CLEAN.clean_accuracy_defended))],
                ["Robust accuracy, no defence", pct(PAPER["robust_accuracy_undefended"], 2),
                 pct(a.get(ATTACK.robust_accuracy_undefended)), ""],
                ["Robust accuracy, MedFedPure", pct(PAPER["robust_accuracy_defended"], 2), "",
                 pct(a.get(ATTACK.robust_accuracy_defended))]]
        out.append(_table(["", "Paper", "Ours, no defence", "Ours, MedFedPure"], rows))
        out.append("\nSame protocol as the paper: the attacker sees only the hospital's classifier; the same "
                   "adversarial scans are fed to the undefended classifier and to the defence. Unlike the paper's "
                   "published code, the test scans share no near-duplicate group with training scans, the "
                   "detector uses a threshold calibrated on each hospital's own clean scans (no per-batch "
                   "quota), purification never sees the label, and PGD projects onto the eps-ball after every "
                   "step.\n")
    rows = [_row(n, res, i) for n, res in runs.items() if not n.endswith("sweep")
            for i in range(len(res.get("attacks", [])))]
    if rows:
        out.append("## All attacks\n")
        out.append(_table(["Run", "Attack", "Attacker sees", "Pairs", "Clean", "Clean, defended",
                           "Robust, undefended", "Robust, defended", "Detection AUROC", "FPR", "TPR"], rows))
        out.append("\n`adaptive`: PGD through the whole defence: expectation over the purifier's noise (EOT), "
                   "gradients through the DDIM chain (BPDA in `adaptive-bpda`) and a term that drives the MAE score "
                   "under the hospital's threshold (see `medfedpure/attacks.py`). It runs on a fixed seeded "
                   "class-stratified subset (see Pairs) because every step back-propagates through the purifier.\n")
    for name in ("sweep", "adaptive-sweep"):
        res = runs.get(name)
        if not res or not res.get("attacks"):
            continue
        out.append(f"## Robust accuracy vs eps ({name}: {res['attacks'][0]['name']}, {res.get('n_pairs')} pairs)\n")
        rows = [[num(a["eps"], 4), pct(a.get(ATTACK.robust_accuracy_undefended)),
                 pct(a.get(ATTACK.robust_accuracy_defended)), num(a.get(ATTACK.detection_auroc)),
                 pct(a.get(ATTACK.true_positive_rate))] for a in res["attacks"]]
        out.append(_table(["eps", "Undefended", "Defended", "Detection AUROC", "TPR"], rows))
    for name, title in (("ablations", "Ablations, paper protocol"), ("pgd-8-255", "Ablations, PGD eps = 8/255"),
                        ("adaptive", "Ablations, adaptive attack")):
        res = runs.get(name) or (runs.get("paper") if name == "ablations" else None)
        if not res or not res.get("attacks"):
            continue
        ab = res.get("ablations", {})
        rows = [[k.replace("_", " "), pct(v.get(VARIANT.clean_accuracy)), pct(v.get(VARIANT.robust_accuracy))]
                for k, v in ab.items() if isinstance(v, dict) and k != "detect_and_reject"]
        fed = runs.get("fedavg") if name == "ablations" else None
        if fed and fed.get("attacks"):
            rows.append(["FedAvg classifier, no defence", pct(fed.get(CLEAN.clean_accuracy)),
                         pct(fed["attacks"][0].get(ATTACK.robust_accuracy_undefended))])
            rows.append(["FedAvg classifier + MAE + purifier", pct(fed.get(CLEAN.clean_accuracy_defended)),
                         pct(fed["attacks"][0].get(ATTACK.robust_accuracy_defended))])
        out.append(f"## {title}\n")
        out.append(_table(["Variant", "Clean accuracy", "Robust accuracy"], rows))
        rej = ab.get("detect_and_reject", {})
        out.append(f"\nDetect and reject, no purification: {pct(rej.get(REJECT.clean_rejection_rate))} of clean "
                   f"scans rejected ({pct(rej.get(REJECT.clean_accuracy_on_accepted))} accuracy on the rest); "
                   f"{pct(rej.get(REJECT.adversarial_rejection_rate))} of adversarial scans rejected "
                   f"({pct(rej.get(REJECT.robust_accuracy_on_accepted))} accuracy on the accepted ones; "
                   f"{pct(rej.get(REJECT.robust_accuracy_rejected_counts_as_stopped))} if a rejection counts as "
                   "stopping the attack).\n")
    out.append("## Personalised vs FedAvg\n\nAccuracy of the personalised mixture, the FedAvg model (and local-only "
               "training, when run) on each hospital's own held-out scans and on the test split, from the "
               "training records: [baselines.md](baselines.md).\n")
    out.append("## Figures\n")
    captions = {"roc": "Detector ROC: MAE anomaly score, clean vs adversarial scans; dots are the hospitals' "
                       "calibrated thresholds.",
                "robust_vs_eps": "Robust accuracy vs L-inf budget (eps = 0 is clean accuracy).",
                "per_hospital": "Per-hospital accuracy under the paper's protocol.",
                "accuracy_per_round": "Federated training: validation accuracy per round."}
    for key, path in figures.items():
        if path:
            out.append(f"![{key}]({Path(path).name})\n\n{captions.get(key, '')}\n")
    if round_plot is None:
        out.append("(accuracy_per_round.png: not found; train the classifier first.)\n")
    out.append("## Reproducing\n")
    text = ("`scripts/make_report.sh` regenerates this folder from the checkpoints and the data (settings at the "
            "top of the script).")
    if wall_time is not None:
        import os

        text += (f" Wall time of the last regeneration: {wall_time / 60:.1f} min on {_cpu_name()} ({os.cpu_count()} cores"
                 + (f"; {machine_note}" if machine_note else "") + ").")
    env = paper.get("environment", {}) if paper else {}
    git = paper.get("git", {}) if paper else {}
    if env:
        text += (f" The paper run: git commit {git.get('commit')}" + (" (with uncommitted changes)" if git.get("dirty") else "")
                 + f"; device {env.get('device')}, {env.get('torch_threads')} torch threads; "
                 + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v) + ".")
    commits = [f"`{name}` {str(res.get('git', {}).get('commit') or 'unknown')[:7]}"
               + (" (uncommitted changes)" if res.get("git", {}).get("dirty") else "") for name, res in runs.items()]
    if commits:  # runs are regenerated one by one (ONLY=...), so each names the code it ran
        text += " Each run's git commit: " + ", ".join(commits) + "."
    out.append(text)
    return "\n".join(out) + "\n"


README_START = "<!-- results:start (written by scripts/make_report.sh; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def pooled_defended(attack: dict) -> tuple[int, int] | None:
    """(correct, pairs) of the defended answers pooled over hospitals, for a run with one purifier seed (the
    headline figure is the mean over hospitals, which weighs a hospital with one pair like one with three)."""
    per = attack.get("per_hospital") or {}
    if not per or any(len(h.get(ATTACK.robust_accuracy_defended, {}).get("values", [])) != 1 for h in per.values()):
        return None
    k = sum(h["n"] * h[ATTACK.robust_accuracy_defended]["values"][0] for h in per.values())
    return int(round(k)), int(sum(h["n"] for h in per.values()))


def strong_intervals(runs: dict) -> list[str]:
    """One line per attack of a strong run (or its documented subset): pooled count and Wilson 95% interval."""
    from medfedpure.metrics import wilson_interval

    lines = []
    for name, res in runs.items():
        if not _is_strong(name):
            continue
        for a in res.get("attacks", []):
            pooled = pooled_defended(a)
            if pooled is None:
                continue
            k, n = pooled
            lo, hi = wilson_interval(k, n)
            lines.append(f"- `{name}`, {a['label']}: defended answers right on {k} of {n} pairs pooled over hospitals "
                         f"({pct(k / n)}, 95% Wilson interval [{100 * lo:.1f}, {100 * hi:.1f}]).")
    return lines


def headline_markdown(runs: dict) -> str:
    """The README's results table (HEADLINE_RUNS, every attack of each), from the same runs as the report, and
    the strong runs' pooled intervals."""
    rows = [_row(n, res, i)[:11] for n, res in runs.items() if _in_headline(n)
            for i in range(len(res.get("attacks", [])))]
    intervals = strong_intervals(runs)
    head = ["Run", "Attack", "Attacker sees", "Pairs", "Clean", "Clean, defended", "Robust, undefended",
            "Robust, defended", "Detection AUROC", "FPR", "TPR"]
    paper = PAPER
    return (_table(head, rows) + f"\n\nPaper (Table 2, PGD eps 0.015): clean {pct(paper['clean_accuracy'], 2)}, "
            f"robust {pct(paper['robust_accuracy_undefended'], 2)} without and "
            f"{pct(paper['robust_accuracy_defended'], 2)} with the defence. Full report: "
            "[reports/REPORT.md](reports/REPORT.md).\n" + ("\nStrong adaptive runs, pooled:\n\n" + "\n".join(intervals) + "\n"
                                                           if intervals else ""))


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results markers ({README_START} ... {README_END})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_START + "\n" + block + README_END + tail, encoding="utf-8")


def build_report(runs_dir, out_dir, wall_time: float | None = None, round_plot=None,
                 machine_note: str | None = None, readme: Path | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(Path(runs_dir))
    if "paper" not in runs:
        raise FileNotFoundError(f"no {Path(runs_dir) / 'paper' / 'results.json'}: run the paper protocol first")
    figures = {"roc": plot_roc(runs, out / "roc.png"),
               "robust_vs_eps": plot_robust_vs_eps(runs, out / "robust_vs_eps.png"),
               "per_hospital": plot_per_hospital(runs.get("paper"), out / "per_hospital.png")}
    copied = None
    if round_plot and Path(round_plot).is_file():
        copied = out / "accuracy_per_round.png"
        shutil.copyfile(round_plot, copied)
        figures["accuracy_per_round"] = copied
    path = out / "REPORT.md"
    path.write_text(report_markdown(runs, figures, wall_time, copied, machine_note))
    headline = headline_markdown(runs)
    (out / "HEADLINE.md").write_text(headline)
    if readme is not None:
        update_readme(Path(readme), headline)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medfedpure.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="folder holding <name>/results.json of the evaluation runs")
    p.add_argument("--out", required=True, help="where REPORT.md and the PNGs go")
    p.add_argument("--round-plot", default=None, help="accuracy-per-round PNG to copy (runs/classifier/...)")
    p.add_argument("--wall-time", type=float, default=None, help="seconds the whole report took (stated in it)")
    p.add_argument("--machine-note", default=None, help="stated beside the wall time (e.g. the load average)")
    p.add_argument("--readme", default=None, help="README whose results block is replaced by the headline table")
    args = p.parse_args(argv)
    try:
        path = build_report(args.runs, args.out, args.wall_time, args.round_plot, args.machine_note, args.readme)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
