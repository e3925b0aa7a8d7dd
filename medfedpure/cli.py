"""`python -m medfedpure ...`: a thin dispatcher; each command lives in `medfedpure.commands.<name>`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Command modules are imported lazily so `--help` and light commands stay fast (torch import is ~2 s).
COMMANDS = {
    "data": "Split, partition and check a scan folder (Br35H layout).",
    "scan": "Read scans exactly as the app does; report or save the preprocessed image.",
    "train": "Train the federated models (classifier, detector, purifier) with Flower.",
    "analyze": "Run the MedFedPure pipeline (detect, purify, classify) on scan files.",
    "evaluate": "Evaluate clean and adversarial accuracy, detection and the defence.",
    "release": "Assemble a checkpoint folder (Hub layout, model card) from a training run.",
    "push": "Upload a checkpoint folder to the Hugging Face Hub.",
    "pull": "Download and verify a checkpoint folder from the Hugging Face Hub.",
}


def _load(name: str):
    return importlib.import_module(f"medfedpure.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medfedpure",
        description="MedFedPure: federated brain-tumour MRI classification defended by MAE detection and "
                    "adaptive diffusion purification. Research use only, not a medical device.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name != only:  # only the chosen command's module is imported
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:  # a command not built yet still shows in --help
            if exc.name != f"medfedpure.commands.{name}":
                raise
            sub.add_parser(name, help=help_text + " (not available)")
            continue
        module.add_parser(sub, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "run"):
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 1
    return int(args.run(args) or 0)
