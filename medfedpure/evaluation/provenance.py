"""Where a results.json came from (models, code, machine, packages) and writing it with its RESULTS.md."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medfedpure.evaluation.settings import EvalSettings

__all__ = ["environment", "git_commit", "write_results", "RESULTS_FORMAT"]

RESULTS_FORMAT = 1
REPO_ROOT = Path(__file__).resolve().parents[2]


def _relative(text) -> str:
    """Strip this machine's absolute repository/working-directory prefixes from a description."""
    text = str(text)
    for base in sorted({str(REPO_ROOT), str(Path.cwd())}, key=len, reverse=True):
        text = text.replace(base + "/", "").replace(base, ".")
    return text.replace(str(REPO_ROOT.parent) + "/", "../")


def _model_info(pipe, settings: EvalSettings) -> dict:
    """Which models were evaluated: where they came from, and any classifier swapped in or attacked instead."""
    source = getattr(pipe, "source", None)
    info = {"description": _relative(pipe.source_description),
            "origin": getattr(source, "origin", None), "repo_id": getattr(source, "repo_id", None),
            "revision": getattr(source, "revision", None), "hospitals": pipe.hospitals}
    if getattr(pipe, "classifier_source", None):
        info["classifier_source"] = _relative(pipe.classifier_source)
    if settings.transfer_from:
        info["attack_source"] = _relative(settings.transfer_from)
    return info


def environment(device=None) -> dict:
    """Python, platform, device, torch threads and the versions of the packages the figures depend on."""
    from importlib import metadata

    import torch

    versions = {}
    for pkg in ("torch", "torchvision", "torchattacks", "flwr", "diffusers", "numpy", "safetensors",
                "huggingface-hub", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "machine": platform.machine(), "device": str(device) if device is not None else None,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "packages": versions}


def git_commit() -> dict:
    """{"commit": HEAD or None, "dirty": bool or None} (read-only git calls)."""
    def _git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(results: dict, out_dir) -> Path:
    """results.json + RESULTS.md in `out_dir`."""
    import json

    from medfedpure.report import results_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default, allow_nan=False) + "\n")
    (out / "RESULTS.md").write_text(results_markdown(results))
    return path

