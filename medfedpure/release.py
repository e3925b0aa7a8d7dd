"""Assemble a checkpoint folder (bundled `pretrained/` or a Hub repo) from a training run, with its model card.

    python -m medfedpure release --runs runs --out pretrained [--results reports/results_paper.json]

Weights are stored as float16 safetensors (half the bytes; the pipeline loads them into float32). All reported
figures are measured on these float16 weights, so the conversion's cost is inside every number.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medfedpure import checkpoint_format as fmt
from medfedpure.federated.records import portable
from medfedpure.hub import write_manifest

PARTS = {"classifier": "classifier", "mae": "detector", "purifier": "purifier"}
COPY_SUFFIXES = (".json", ".png")


def _halve(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(dst), metadata={"format": "pt"})


def _copy_file(src: Path, dst: Path) -> None:
    """Plots as they are; JSON records and configs without the training machine's absolute paths."""
    if src.suffix == ".json":
        data = json.loads(src.read_text())
        clean = portable(data)
        if clean != data:  # same layout as the writers: history.json indent 1, configs indent 2
            dst.write_text(json.dumps(clean, indent=1 if src.name == "history.json" else 2, sort_keys=True) + "\n")
            return
    shutil.copyfile(src, dst)


def _copy_run(src: Path, dst: Path) -> None:
    """Weights as float16 safetensors, the model's config in the current (sectioned) format, records and plots
    as they are."""
    dst.mkdir(parents=True, exist_ok=True)
    kind = fmt.kind_of_folder(src)
    for f in sorted(src.iterdir()):
        if f.suffix == ".safetensors":
            _halve(f, dst / f.name)
        elif f.name == fmt.CONFIG_FILES[kind]:
            fmt.write_config(dst, fmt.from_dict(portable(fmt.read_config(src, kind).to_dict()), kind))
        elif f.suffix in COPY_SUFFIXES:
            _copy_file(f, dst / f.name)


def _copy_records(src: Path, dst: Path) -> None:
    """A run's training records only: per-round history and its plot."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in [src / "history.json", *src.glob("*_per_round.png")]:
        if f.is_file():
            _copy_file(f, dst / f.name)


def release(runs: Path, out: Path, split_csv: Path | None = None, detector: Path | None = None) -> Path:
    """`detector`: the MAE run to ship (default RUNS/mae), e.g. a calibration-only run over it."""
    out.mkdir(parents=True, exist_ok=True)
    for run_name, part in PARTS.items():
        src, dst = (detector if run_name == "mae" and detector else runs / run_name), out / part
        if not src.is_dir():
            raise FileNotFoundError(f"{src} is missing: train it with `python -m medfedpure train {run_name}`")
        _copy_run(src, dst)
    # A recalibrated detector keeps the training records of the run its weights come from.
    trained_in = fmt.read_config(out / "detector", "detector").training.get("recalibrated_from")
    if trained_in and Path(trained_in).is_dir():
        _copy_records(Path(trained_in), out / "detector")
    # The FedAvg baseline ships too: transfer attacks and the FedAvg ablation are then reproducible anywhere.
    baseline = runs / "fedavg" / "classifier"
    if baseline.is_dir():
        _copy_run(baseline, out / "baselines" / "fedavg")
    # Local-only training has no shared model (each hospital keeps its own): only its records ship.
    local = runs / "local" / "classifier"
    if (local / "history.json").is_file():
        _copy_records(local, out / "baselines" / "local")
    # The personalised mixture trained with the plain (unweighted) loss: the class-balance ablation's records.
    unweighted = runs / "unweighted" / "classifier"
    if (unweighted / "history.json").is_file():
        _copy_records(unweighted, out / "baselines" / "moe-unweighted")
    split_src = split_csv or runs / "classifier" / "split.csv"
    if split_src.resolve() != (out / "split.csv").resolve():
        shutil.copyfile(split_src, out / "split.csv")
        meta = split_src.with_suffix(".json")
        if meta.exists():
            shutil.copyfile(meta, out / "split.json")
    return out


def finish(out: Path, results_dir: Path | None = None) -> None:
    """Write the model card and the manifest (run again after the evaluation to fill the card's table)."""
    from medfedpure.model_card import write_model_card

    write_model_card(out, results_dir)
    write_manifest(out)
