"""Adversarial batches kept on disk, so that a long attack run (the strong adaptive attack takes hours on a CPU)
that stops, or is stopped, continues from the batches it already made.

A batch is found again only under the same attack settings, the same scans and the same weights: its key hashes
the attack's settings, the batch key (hospital and scan names, which also fix the attack's noise), and a digest
of every weight and setting of the defence the attack could have read. The names only enter the hash, so the
store's file names say nothing about the scans. A batch loaded is the batch that would have been made: attacks
are seeded per batch key, so a resumed run gives the figures of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch


def _update_with_state(digest, module: torch.nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        if ".gate." in f".{name}":
            continue  # a classifier's own gate is freshly initialised at load (each hospital's is hashed apart)
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())


def weights_digest(pipe, source=None) -> str:
    """One hash of everything an attack on `pipe` may depend on: the classifier with its gates, the MAE, the
    purifier, the detector's calibration and the purification settings (and a transfer source's classifier)."""
    digest = hashlib.sha256()
    modules = [pipe.classifier, *(pipe.gates[h] for h in sorted(pipe.gates)), pipe.mae, pipe.purifier]
    if source is not None:
        modules.append(source)
    for module in modules:
        _update_with_state(digest, module)
    settings = {"detector": pipe.detector_config, "t": [pipe.t_min, pipe.t_max], "ddim_steps": pipe.ddim_steps}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class AttackStore:
    """`folder/<hash>.npy` per adversarial batch; writes are atomic, so a run killed mid-write leaves no batch."""

    def __init__(self, folder: str | os.PathLike, weights: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.weights = weights
        self.loaded = 0
        self.saved = 0

    def _path(self, attack_settings: dict, key) -> Path:
        text = json.dumps({"weights": self.weights, "attack": attack_settings, "key": key},
                          sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.npy"

    def load(self, attack_settings: dict, key, shape: tuple) -> torch.Tensor | None:
        """The stored batch, or None when there is none (or it is not the shape this batch must have)."""
        path = self._path(attack_settings, key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable: make the batch again
        if tuple(array.shape) != tuple(shape):
            return None
        self.loaded += 1
        return torch.from_numpy(array)

    def save(self, attack_settings: dict, key, adv: torch.Tensor) -> None:
        path = self._path(attack_settings, key)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, adv.detach().to("cpu", torch.float32).numpy(), allow_pickle=False)
        os.replace(tmp, path)
        self.saved += 1
