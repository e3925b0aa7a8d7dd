"""`python -m medfedpure release --runs runs --out pretrained`: assemble the Hub-layout checkpoint folder."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Weights become float16 "
                              "safetensors; the model card is written from the configs and reports/.")
    p.add_argument("--runs", default="runs", help="training output folder (default: runs)")
    p.add_argument("--out", default="pretrained", help="checkpoint folder to write (default: pretrained)")
    p.add_argument("--split", help="split CSV used for training (default: RUNS/classifier/split.csv)")
    p.add_argument("--detector", help="MAE run folder to ship (default: RUNS/mae), e.g. a recalibrated one")
    p.add_argument("--results", default="reports", help="folder of evaluation results for the model card")
    p.add_argument("--card-only", action="store_true", help="only rewrite the model card and the manifest")
    p.set_defaults(run=run)


def run(args) -> int:
    from medfedpure.release import finish, release

    out = Path(args.out)
    if not args.card_only:
        release(Path(args.runs), out, Path(args.split) if args.split else None,
                Path(args.detector) if args.detector else None)
    finish(out, Path(args.results))
    print(f"wrote {out} (model card and MANIFEST.sha256)")
    return 0
