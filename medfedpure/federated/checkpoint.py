"""Write a trained model in the Hub layout: `<dir>/model.safetensors` + `config.json` (+ diffusers files)."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Message

from medfedpure import config as defaults
from medfedpure.hub import save_weights
from medfedpure.models.classifier import GATE_PREFIX

# Purification defaults, stored beside the purifier weights (see medfedpure/detector.py: adaptive_t_star).
PURIFICATION = {"t_min": 40, "t_max": 160, "ddim_steps": 4}


def _hospital_of(reply: Message) -> int:
    return int(reply.content.metric_records["metrics"]["hospital"])


def _training_summary(settings: dict, summary: dict) -> dict:
    keep = ("seed", "num-rounds", "local-epochs", "lr", "batch-size", "num-hospitals", "mode", "class-balance", "shift",
            "augmentation", "type-weight", "init-from")
    return {**{k: settings[k] for k in keep if k in settings}, "train_seconds": summary["train_seconds"],
            "engine": settings.get("engine", "flower-deployment")}


def write_checkpoint(out_dir: Path, kind: str, model, settings: dict, replies: list[Message], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    training = _training_summary(settings, summary)
    if int(settings.get("num-rounds", 1)) == 0 and settings.get("init-from"):
        # A calibration-only run: the weights (and how they were trained) are the init-from run's.
        source = json.loads((Path(settings["init-from"]) / "config.json").read_text())
        training = {**source.get("training", {}), "recalibrated_from": str(settings["init-from"])}
    if kind == "classifier":
        state = {k: v for k, v in model.state_dict().items()
                 if not k.startswith(GATE_PREFIX) and not k.endswith("num_batches_tracked")}
        hospitals = []
        for reply in sorted(replies, key=_hospital_of):
            personal = reply.content.array_records.get("personal")
            if personal is None or not len(personal):
                continue
            h = _hospital_of(reply)
            hospitals.append(h)
            for key, value in personal.to_torch_state_dict().items():
                state[f"gates.{h}.{key[len(GATE_PREFIX):]}"] = value
        config = {"model_type": "medfedpure-classifier", **settings["model-config"], "mode": settings["mode"],
                  "class_names": list(defaults.CLASS_NAMES), "image_size": defaults.IMAGE_SIZE,
                  **({"tumour_types": list(defaults.TUMOUR_TYPES)} if settings["model-config"].get("num_types") else {}),
                  "hospitals": hospitals, "training": training}
        save_weights(out_dir, state, config)
    elif kind == "mae":
        calibration = {}
        for reply in replies:
            record = reply.content.metric_records.get("calibration")
            if record is not None:
                calibration[str(_hospital_of(reply))] = {k: record[k] for k in record.keys()}
        ratio = settings.get("score-mask-ratio") or settings["model-config"].get("mask_ratio", 0.75)
        config = {"model_type": "medfedpure-mae-detector", **settings["model-config"],
                  "score": str(settings.get("score", "mean_abs_error")), "score_mask_ratio": float(ratio),
                  "score_repeats": int(settings["score-repeats"]), "score_seed": int(settings["seed"]),
                  "target_fpr": float(settings["target-fpr"]),
                  "calibration_scans": str(settings.get("calibration-scans", "val")),
                  "calibration": dict(sorted(calibration.items(), key=lambda kv: int(kv[0]))),
                  "training": training}
        save_weights(out_dir, {k: v for k, v in model.state_dict().items()}, config)
    elif kind == "purifier":
        model.unet.save_pretrained(out_dir, safe_serialization=True)
        from medfedpure.models.purifier import build_scheduler

        build_scheduler().save_pretrained(out_dir)
        (out_dir / "purification.json").write_text(json.dumps(
            {**PURIFICATION, "train_max_timestep": int(settings["max-timestep"]), "crop": int(settings["crop"]),
             "training": training}, indent=2, sort_keys=True) + "\n")
    else:
        raise ValueError(kind)
