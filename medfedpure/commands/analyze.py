"""`python -m medfedpure analyze FILE...`: detect, purify and classify scans; one JSON line per file."""

from __future__ import annotations

import argparse
import json
import sys


def _number(text: str) -> float:
    """'0.015' or '8/255' -> float (as `evaluate` takes them)."""
    from medfedpure.evaluation.settings import parse_number

    try:
        return parse_number(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 0.015 or 8/255)") from None


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, BMP, TIFF, WebP, DICOM or NIfTI scans")
    p.add_argument("--model", help="checkpoint folder or Hugging Face repo id (default: bundled pretrained/)")
    p.add_argument("--revision", help="Hub revision (pin a commit hash)")
    p.add_argument("--hospital", type=int, default=0, help="whose personalised model and threshold (default 0)")
    p.add_argument("--attack", choices=["none", "fgsm", "pgd"], default="none",
                   help="perturb each scan first (attacker sees the classifier), to see the defence respond")
    p.add_argument("--eps", type=_number, default=8 / 255, help="attack budget, L-inf in [0,1] pixel units "
                   "(0.015, 8/255)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (step size eps/4; FGSM takes one)")
    p.add_argument("--purify", choices=["flagged", "always", "never"], default="flagged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--frame", type=int, help="frame of a multi-frame DICOM, from 0 (default: middle); --slice "
                   "counts from 1")
    from medfedpure.commands.scan import add_volume_options

    add_volume_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line (default: readable lines)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from medfedpure.attack_workflow import AttackSpec, analyze_attacked
    from medfedpure.commands.scan import index_of, place
    from medfedpure.io import ScanReadError, read_scan
    from medfedpure.ood import OOD_WORDS
    from medfedpure.pipeline import MedFedPure

    try:
        spec = AttackSpec(args.attack, eps=args.eps, steps=args.steps, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        pipe = MedFedPure.from_pretrained(args.model, revision=args.revision, device=args.device)
        pipe._check_hospital(args.hospital)
    except Exception as exc:  # model problems are one clear line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for path in args.files:
        row = {"file": path, "ok": False, "error": None}
        try:
            scan = read_scan(path, frame=index_of(args), plane=args.plane)
            run = analyze_attacked(pipe, torch.from_numpy(scan.image)[None, None], args.hospital, spec,
                                   purify=args.purify, seed=args.seed, colours=[scan.meta.get("colour_fraction")])
            res = run.result[0]
            row.update(ok=True, prediction=res.prediction,
                       probabilities=dict(zip(pipe.class_names, res.probabilities)),
                       detector_score=res.score, threshold=res.threshold, flagged=res.flagged, t_star=res.t_star,
                       purified_prediction=res.purified_prediction, final_prediction=res.final_prediction,
                       final_probabilities=dict(zip(pipe.class_names, res.final_probabilities)),
                       tumour_type=res.tumour_type, tumour_type_probabilities=res.tumour_type_probabilities,
                       in_distribution=res.in_distribution, ood_score=res.ood_score,
                       ood_threshold=res.ood_threshold, ood_reason=res.ood_reason,
                       latency_ms=res.timings_ms["total"], timings_ms=res.timings_ms, hospital=args.hospital,
                       attack=spec.name, clean_prediction=run.clean[0].prediction if run.clean is not None else None,
                       device=str(pipe.device), format=scan.meta["format"], plane=scan.meta.get("plane"),
                       slice=(scan.meta["frame"] + 1) if scan.meta.get("frame") is not None else None,
                       slices=scan.meta.get("frames"), volumes=scan.meta.get("volumes"))
            where = place(scan.meta)
        except ScanReadError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # keep going with the other files
            row["error"] = f"{type(exc).__name__}: {exc}"
        failed += not row["ok"]
        if args.json:
            print(json.dumps(row), flush=True)
        elif row["ok"]:
            flag = f"FLAGGED (score {row['detector_score']:.4f} > {row['threshold']:.4f}), purified at t*={row['t_star']}" \
                if row["flagged"] else f"not flagged (score {row['detector_score']:.4f} <= {row['threshold']:.4f})"
            kind = f" (looks like {row['tumour_type']}, if a tumour)" if row["tumour_type"] else ""
            ood = (f"  NOT LIKE ANY TRAINING SCAN ({OOD_WORDS.get(row['ood_reason'], 'unlike them')}): do not read "
                   "a diagnosis from it;") if row["in_distribution"] is False else ""
            at = f" ({where})" if where else ""
            print(f"{path}{at}: {row['final_prediction']}{kind}  [{ood}{flag}; before: {row['prediction']}; "
                  f"{row['latency_ms']:.0f} ms]", flush=True)
        else:
            print(f"{path}: ERROR {row['error']}", file=sys.stderr, flush=True)
    return 2 if failed else 0
