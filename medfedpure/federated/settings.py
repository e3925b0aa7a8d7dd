"""Run settings for each federated job. `flwr run . --run-config 'k=v'` and the CLI override these."""

from __future__ import annotations

import json

COMMON = {
    "seed": 0,
    "data-path": "",          # preprocessed cache (simulation: shared file; deployment: each node's own)
    "out-dir": "runs",
    "num-hospitals": 10,
    "min-fraction": 0.5,      # the round goes ahead once half the hospitals are available
    "round-timeout": 3600.0,  # seconds to wait for replies before aggregating what arrived
    "max-norm-ratio": 10.0,   # updates larger than 10x the median update are rejected
    "client-threads": 1,
    "device": "auto",
    "shift": False,           # per-hospital acquisition shift (scanner differences)
    "lr-schedule": "cosine",  # local learning rate decays over the rounds (or "constant")
    "init-from": "",          # warm start: a run's <model> folder (shared weights only)
    "fault-drop-hospital": -1,
    "fault-nan-hospital": -1,
    "fault-scale-hospital": -1,
}

PER_MODEL = {
    "classifier": {
        "mode": "moe",        # moe (personalised) | fedavg (one global model) | local (no federation)
        "class-balance": "balanced",  # balanced: each hospital weights its loss so both classes count equally | none
        "num-rounds": 40, "local-epochs": 2, "lr": 1e-3, "batch-size": 32,
        "model-config": {"num_classes": 2, "num_experts": 3, "width": 32, "gate_width": 16, "expert_type": "head",
                         "norm": "group"},
    },
    "mae": {
        "num-rounds": 12, "local-epochs": 4, "lr": 1.5e-3, "batch-size": 32,
        "target-fpr": 0.05, "score-repeats": 2, "score": "background_highpass", "score-mask-ratio": 0.75,  # see reports/detector_statistics.md
        "calibration-scans": "train+val",  # val | train+val (model-free statistics only; see task.calibration_scans)
        "model-config": {"image_size": 128, "patch_size": 16, "embed_dim": 192, "depth": 6, "heads": 4,
                         "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4, "mask_ratio": 0.75},
    },
    "purifier": {
        "num-rounds": 8, "local-epochs": 3, "lr": 3e-4, "batch-size": 32, "crop": 64, "max-timestep": 300,
        "model-config": {},
    },
}


def resolve(kind: str, overrides: dict | None = None) -> dict:
    """Defaults for `kind`, then overrides; `model-config` may be given as a dict or a JSON string."""
    if kind not in PER_MODEL:
        raise ValueError(f"unknown model {kind!r}; choose from {sorted(PER_MODEL)}")
    settings = {**COMMON, **PER_MODEL[kind], "model": kind}
    for key, value in (overrides or {}).items():
        if key == "model-config":
            value = json.loads(value) if isinstance(value, str) else value
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    if kind == "classifier" and settings["mode"] in ("fedavg", "local"):
        settings["model-config"] = {**settings["model-config"], "num_experts": 1}
    return settings
