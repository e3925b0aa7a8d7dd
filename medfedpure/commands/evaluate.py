"""`python -m medfedpure evaluate --data DIR --out DIR`: clean / adversarial accuracy, detection, the defence."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfedpure.evaluation.settings import AttackName, EvalSettings, Pairs, Purify

# what --attack all runs (eotpgd only by name)
ALL_ATTACKS = (AttackName.FGSM, AttackName.PGD, AttackName.PGDL2, AttackName.CW, AttackName.ADAPTIVE)


class _Defaults(argparse.HelpFormatter):
    """Append '(default: X)' where there is a default and the help text does not already name one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _values(kind) -> list[str]:
    return [m.value for m in kind]


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    d = EvalSettings()  # every evaluation flag's default
    p = subparsers.add_parser(name, help=help_text, description=(
        help_text + " The paper's protocol by default: PGD L-inf eps=0.015, step 0.003, 7 steps, on each hospital's "
        "classifier; the same adversarial scans go to the undefended classifier and to the defence. Writes "
        "results.json and RESULTS.md to --out."), formatter_class=_Defaults)
    p.add_argument("--data", required=True, help="scan folder (Br35H layout: no/, yes/)")
    p.add_argument("--out", required=True, help="output folder for results.json and RESULTS.md")
    p.add_argument("--split", choices=["test", "val", "all"], default="test",
                   help="test: the global test split, every hospital's model on every scan; val: each hospital on "
                        "its own val scans; all: every labelled scan in --data (an external data set)")
    p.add_argument("--split-csv", default=None, help="split CSV (default: split.csv beside the model)")
    p.add_argument("--classes", default=None, metavar="MAP",
                   help="--split all: class folders, e.g. 'glioma,meningioma,pituitary=tumour notumor=no_tumour' "
                        "(default: recognised from the folder names: yes/no, or glioma/meningioma/pituitary/notumor, "
                        "also one level down such as Testing/glioma)")
    p.add_argument("--hospital", default="all", help="hospital id(s), comma-separated, or all")
    p.add_argument("--attack", default=",".join(d.attacks),
                   help=f"{', '.join(_values(AttackName))}, a comma-separated list, or all "
                        f"(= {','.join(ALL_ATTACKS)})")
    p.add_argument("--eps", default=",".join(str(e) for e in d.eps),
                   help="L-inf budget(s), comma-separated; fractions allowed (8/255)")
    p.add_argument("--step", default=d.step, help="PGD step: absolute (0.003, 2/255) or relative (eps/4)")
    p.add_argument("--steps", type=int, default=d.steps, help="PGD iterations")
    p.add_argument("--eps-l2", default=str(d.eps_l2), help="L2 budget of pgdl2")
    p.add_argument("--cw-c", type=float, default=d.cw_c, help="CW trade-off constant c")
    p.add_argument("--cw-steps", type=int, default=d.cw_steps, help="CW Adam steps")
    p.add_argument("--eot", type=int, default=d.eot, help="adaptive/eotpgd: purifier noise draws per step")
    p.add_argument("--lam", type=float, default=d.lam, help="adaptive: weight of the detector-evasion term")
    p.add_argument("--margin", type=float, default=d.margin, help="adaptive: push the score under margin x threshold")
    p.add_argument("--gradient", choices=["full", "bpda"], default=d.gradient,
                   help="adaptive: back-propagate through the purifier, or BPDA (identity gradient)")
    p.add_argument("--loss", choices=["ce", "margin"], default=d.loss, help="adaptive: attack loss")
    p.add_argument("--restarts", type=int, default=d.restarts,
                   help="adaptive: restarts for the scans not yet fooled")
    p.add_argument("--attack-cache", default=d.attack_cache, metavar="DIR",
                   help="keep each batch of adversarial scans in DIR; rerun the same command after a stop and it "
                        "continues from the batches already made (same settings and weights; same figures)")
    p.add_argument("--known-seed", action="store_true",
                   help="adaptive: the attacker knows the defence's purifier noise (its first seed; use --repeats 1)")
    p.add_argument("--through", choices=_values([Purify.ALWAYS, Purify.FLAGGED]), default=d.through,
                   help="adaptive: purification mode the attack differentiates through")
    p.add_argument("--transfer-from", default=d.transfer_from, metavar="SOURCE",
                   help="craft the attacks on this classifier (folder with config.json + model.safetensors, e.g. "
                        "runs/fedavg/classifier) and evaluate them on ours (black-box transfer)")
    p.add_argument("--classifier", default=None, metavar="SOURCE",
                   help="replace the model's classifier by this one (e.g. runs/fedavg/classifier: FedAvg ablation)")
    p.add_argument("--limit", type=int, default=None,
                   help="seeded class-stratified subset of at most N scans (per hospital for --split val)")
    p.add_argument("--pairs", choices=_values(Pairs), default=d.pairs.value,
                   help="all: every scan with every hospital's model; round-robin: each scan with one hospital")
    p.add_argument("--repeats", type=int, default=d.repeats, help="purifier seeds per defended figure (mean and std)")
    p.add_argument("--seed", type=int, default=d.seed, help="attack, subset and first purifier seed")
    p.add_argument("--purify", choices=_values(Purify), default=d.purify.value)
    p.add_argument("--ablations", action="store_true", default=d.ablations,
                   help="also purify every scan, and use a fixed t* = t_max (detect-and-reject is always reported)")
    p.add_argument("--model", default=None, help="checkpoint folder or Hub repo id (default: bundled pretrained/)")
    p.add_argument("--revision", default=None, help="Hub revision (commit hash to pin)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--adaptive-batch-size", type=int, default=d.adaptive_batch_size)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)
    return p


def _hospitals(text: str, available: list[int]) -> list[int]:
    if text.strip().lower() == "all":
        return list(available)
    chosen = [int(t) for t in text.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"unknown hospital(s) {unknown}; this checkpoint has {available}")
    return chosen


def _attacks(text: str) -> list[str]:
    names = []
    for t in (t.strip().lower() for t in text.split(",")):
        if not t:
            continue
        names += list(ALL_ATTACKS) if t == "all" else [t]
    return list(dict.fromkeys(names)) or ["none"]


def run(args) -> int:
    import torch

    from medfedpure.data import DataError
    from medfedpure.evaluation import evaluate, load_scans, parse_number, with_classifier, write_results
    from medfedpure.hub import ChecksumError, ModelSourceError
    from medfedpure.pipeline import MedFedPure

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = EvalSettings(
            attacks=_attacks(args.attack), eps=[parse_number(e) for e in args.eps.split(",") if e.strip()],
            step=args.step, steps=args.steps, repeats=args.repeats, seed=args.seed, purify=args.purify,
            pairs=args.pairs, ablations=args.ablations, transfer_from=args.transfer_from,
            batch_size=args.batch_size, adaptive_batch_size=args.adaptive_batch_size,
            eps_l2=parse_number(args.eps_l2), cw_c=args.cw_c, cw_steps=args.cw_steps, eot=args.eot, lam=args.lam,
            margin=args.margin, gradient=args.gradient, through=args.through, loss=args.loss,
            restarts=args.restarts, known_seed=args.known_seed, attack_cache=args.attack_cache,
            progress=not args.quiet)
        settings.validate()
        pipe = MedFedPure.from_pretrained(args.model, revision=args.revision, device=args.device)
        if args.classifier:
            pipe = with_classifier(pipe, args.classifier)
        hospitals = _hospitals(args.hospital, pipe.hospitals)
        split_csv = Path(args.split_csv) if args.split_csv else Path(pipe.source.path) / "split.csv"
        if args.classes and args.split != "all":
            raise ValueError("--classes applies to --split all (a split CSV already says each scan's class)")
        scans = load_scans(args.data, args.split, split_csv if args.split != "all" else None, hospitals,
                           args.limit, args.seed, classes=args.classes)
    except (ValueError, DataError, ModelSourceError, ChecksumError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"evaluating {len(scans)} scans x hospitals {hospitals} ({args.split} split), attacks "
              f"{[a.value for a in settings.attacks]}, eps {settings.eps}, {settings.repeats} purifier seed(s) on "
              f"{pipe.device}",
              file=sys.stderr, flush=True)
    results = evaluate(pipe, scans, settings, hospitals)
    path = write_results(results, args.out)
    print(_summary(results))
    print(f"wrote {path} and {path.with_name('RESULTS.md')}")
    return 0


def _summary(results: dict) -> str:
    from medfedpure.evaluation.metrics import ATTACK, CLEAN
    from medfedpure.report import num, pct

    lines = [f"n={results['n']} scans, {results['n_pairs']} pairs; clean accuracy "
             f"{pct(results[CLEAN.clean_accuracy])}, with the defence {pct(results[CLEAN.clean_accuracy_defended])}; "
             f"false-positive rate {pct(results[CLEAN.false_positive_rate])}"]
    if results.get("balanced_accuracy") is not None:
        lines.append(f"balanced accuracy {pct(results['balanced_accuracy'])}, sensitivity "
                     f"{pct(results['sensitivity'])}, specificity {pct(results['specificity'])}"
                     + (f"; tumour type accuracy {pct(results['tumour_type_accuracy'])}"
                        if results.get("tumour_type_accuracy") is not None else ""))
        for name, rec in (results.get("per_source") or {}).items():
            lines.append(f"  {name}: n={rec['n']}, balanced accuracy {pct(rec['balanced_accuracy'])}, "
                         f"sensitivity {pct(rec['sensitivity'])}, specificity {pct(rec['specificity'])}")
    for a in results["attacks"]:
        lines.append(f"{a['label']} ({a['target']}): robust accuracy {pct(a[ATTACK.robust_accuracy_undefended])} "
                     f"undefended -> {pct(a[ATTACK.robust_accuracy_defended])} defended; detection AUROC "
                     f"{num(a[ATTACK.detection_auroc])}, TPR {pct(a[ATTACK.true_positive_rate])}")
    return "\n".join(lines)
