"""Checkpoints that let a federated run stop and continue where it stopped (setting `resume`).

After every round the server writes `<out-dir>/<model>/resume/server.pt`: the round reached, the global shared
weights and the per-round records. After every local training each hospital writes its personal state (its
gate; FedBN's BatchNorm; a local-only model) to `resume/hospital-<id>.pt` beside it: on the deployment engine,
on its own machine. The local sampler needs no state of its own: every round's shuffling and augmentation are
seeded by (seed, round, hospital), so a resumed round draws what the uninterrupted one would have.

`train ... --set resume=true` continues from the last finished round up to `num-rounds` (raise it to train
longer: the cosine schedule then stretches over the new total; set it to the rounds done to release a stopped run
as it stands). Settings that change the model or the data
(model-config, seed, data-path, num-hospitals, mode) must match the run being continued.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Settings a continued run must share with the run it continues.
MUST_MATCH = ("model", "model-config", "seed", "data-path", "num-hospitals", "mode")


def resume_dir(out_dir: str | os.PathLike, kind: str) -> Path:
    return Path(out_dir) / kind / "resume"


def _save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a run killed mid-write keeps the previous round's file


def save_server(folder: Path, round_done: int, state: dict, records: list, rejected: list, settings: dict,
                train_seconds: float = 0.0) -> None:
    _save({"round": int(round_done), "state": {k: v.detach().cpu() for k, v in state.items()},
           "records": records, "rejected": rejected, "train_seconds": round(float(train_seconds), 1),
           "settings": {k: settings.get(k) for k in MUST_MATCH}}, folder / "server.pt")


def load_server(folder: Path, settings: dict) -> dict | None:
    """The last finished round of the run in `folder`, or None when there is none; ValueError when the
    settings differ from that run's in something that changes the model or the data."""
    path = folder / "server.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    differ = [k for k in MUST_MATCH if saved["settings"].get(k) != settings.get(k)]
    if differ:
        raise ValueError(f"cannot resume {path.parent.parent}: its run had other {', '.join(differ)} "
                         f"(start a new run with another --out, or repeat the original settings)")
    return saved


def save_personal(folder: Path, hospital: int, state: dict) -> None:
    _save({k: v.detach().cpu() for k, v in state.items()}, folder / f"hospital-{int(hospital)}.pt")


def load_personal(folder: Path, hospital: int) -> dict | None:
    path = folder / f"hospital-{int(hospital)}.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
