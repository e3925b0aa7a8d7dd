"""`python -m medfedpure push`: upload a checkpoint folder (manifest refreshed and verified) to the Hub."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=(
        "Refresh MANIFEST.sha256, verify it, create the Hub model repo if needed and upload the folder "
        "(safetensors, json, md, csv, png, txt only; pickles are never uploaded). The token is read from the "
        "environment variable named by --token-env, else from `hf auth login`; it is never printed."))
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="Hub model repository")
    parser.add_argument("--folder", default=None,
                        help="checkpoint folder to upload (default: the bundled pretrained/ of this repository)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message", default=None, help="commit message on the Hub")
    parser.add_argument("--token-env", default="HF_TOKEN", metavar="VAR",
                        help="environment variable holding a write token (default: HF_TOKEN)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from medfedpure.hub import BUNDLED_DIR, push_folder

    folder = args.folder or BUNDLED_DIR
    try:
        commit = push_folder(folder, args.repo_id, private=args.private, commit_message=args.commit_message,
                             token=os.environ.get(args.token_env) or None)
    except Exception as exc:  # one line for the user, no traceback (tokens never appear in these messages)
        print(f"error: push failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    oid = getattr(commit, "oid", None) or str(commit).rstrip("/").rsplit("/", 1)[-1]
    print(f"pushed {folder} to {args.repo_id}")
    print(f"commit: {commit}")
    print(f"pin it with: --revision {oid}")
    return 0
