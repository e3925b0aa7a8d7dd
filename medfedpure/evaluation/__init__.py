"""Evaluate MedFedPure honestly: clean and adversarial accuracy with and without the defence, detection, ablations.

    scans = load_scans("../shared/data/br35h", split="test", split_csv="pretrained/split.csv")
    results = evaluate(pipe, scans, EvalSettings(attacks=["pgd"], repeats=3))

What is measured (commands: the README, section "Evaluate"; the reasons: the project's design notes):
* Pairs (scan, hospital): on the global test split (and on an external folder, ``split="all"``) every scan is
  classified by every hospital's personalised model (``pairs="all"``) or, to save time, by one hospital each in
  a seeded round-robin (``pairs="round-robin"``); on the val split each hospital sees its OWN val scans.
  Headline figures are the mean over hospitals of each hospital's figure (``per_hospital`` holds them).
* One attack object per hospital and batch produces the adversarial scans; the SAME scans then go to the
  undefended classifier and to the defence, so baseline and defended numbers come from one attack.
* The defence is the pipeline's own stages (MAE score -> threshold -> t* -> DDIM purification -> classifier),
  batched; only scans with t* > 0 (the flagged ones, or all with ``purify="always"``) are purified. The
  purifier's noise for a scan is drawn from a generator seeded with (purifier seed, scan path), so a scan's
  result does not depend on the batch it was in or on --limit; with ``repeats=R`` every defended figure is
  reported as mean and std (ddof=1) over R purifier seeds, plus the fraction of pairs whose defended
  prediction changes between seeds.
* Detection: AUROC of the MAE score, clean vs adversarial (Mann-Whitney, ties counted half), the false-positive
  rate (clean scans flagged) and true-positive rate (adversarial scans flagged) at each hospital's threshold.
* Ablations (``ablations=True``): purify every scan; detect-and-reject without purifying (always computed:
  rejection rates, accuracy on the accepted scans, and accuracy counting a rejected adversarial as stopped);
  fixed t* = t_max for every flagged scan instead of the score-dependent t*. FedAvg vs personalised: run the
  evaluation again with the FedAvg classifier swapped in (`with_classifier`, CLI ``--classifier``).

The package, by role: `settings` (EvalSettings, the attack / purify / pairs enums), `scans` (ScanSet,
load_scans, make_pairs), `metrics` (AUROC / ROC and the typed per-hospital records whose field names are the
keys of results.json), `defence` (the batched defence, with_classifier), `run` (evaluate: clean, attack and
ablation steps, then the aggregation), `provenance` (environment, git commit, write_results). Names are
imported on first use, so reading results (`metrics`, `settings`) does not import torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "settings": ("EvalSettings", "AttackName", "Purify", "Pairs", "parse_number", "L2_ATTACKS", "DEFENCE_ATTACKS"),
    "scans": ("ScanSet", "load_scans", "make_pairs", "_stratified_pick"),
    "metrics": ("auroc", "roc_curve", "Spread", "CleanMetrics", "AttackMetrics", "Variant", "DetectAndReject",
                "decision_metrics", "CLEAN", "ATTACK", "VARIANT", "REJECT", "_rankdata"),
    "defence": ("with_classifier",),
    "run": ("evaluate",),
    "provenance": ("environment", "git_commit", "write_results", "RESULTS_FORMAT"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [name for name in _HOME if not name.startswith("_")]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
