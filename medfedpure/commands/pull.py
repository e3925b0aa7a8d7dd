"""`python -m medfedpure pull`: download a checkpoint repo into the Hugging Face cache and verify it."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=(
        "Download a MedFedPure checkpoint repo (safetensors, json, md, csv, png, txt only) into the Hugging Face "
        "cache and check every file against MANIFEST.sha256. With HF_HUB_OFFLINE=1 the cached copy is verified. "
        "Pass a commit hash as --revision to pin the exact weights."))
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="Hub model repository")
    parser.add_argument("--revision", default=None, help="commit hash (recommended), branch or tag; default: main")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from medfedpure.hub import pull

    try:
        resolved = pull(args.repo_id, args.revision)
    except Exception as exc:  # one line for the user, no traceback
        print(f"error: pull failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(resolved.description)
    print(f"path: {resolved.path}")
    print(f"commit: {resolved.revision}")
    return 0
