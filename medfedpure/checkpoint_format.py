"""What a model's config file holds, in one place: read it (today's sections or the older flat files), write
it, and build the model from it.

Each model folder of a checkpoint (`classifier/`, `detector/`, `purifier/`) holds its weights and one JSON file
in sections, as timm's `config.json` keeps a model's architecture apart from how it is used:

    {"format_version": 2, "model_type": "medfedpure-mae-detector",
     "model_args": {"arch": "conv", "patch_size": 8, ...},  # the constructor's arguments, nothing else
     "operating": {"score": ..., "calibration": {"0": {...}}, ...},  # what the pipeline runs it with
     "training": {"num-rounds": 16, "lr": 0.001, ...}}      # provenance only, never read to run the model

- classifier (`config.json`): model_args of `MixtureOfExpertsClassifier`; operating: class_names,
  tumour_types, image_size, hospitals (those whose gates ship), mode, ood (the out-of-distribution check).
- detector (`config.json`): model_args of the MAE (`arch` vit or conv); operating: the score and its
  parameters (score, score_mask_ratio, score_repeats, score_seed, score_norms), target_fpr, calibration_scans and
  calibration (per hospital: threshold, scale, val-n, quantiles).
- purifier (`purification.json`; its `config.json` and `scheduler_config.json` are diffusers' own, and they are
  its architecture): operating: t_min, t_max (the range of t*), ddim_steps.

Files written before format 2 have every key at the top level. `read_config` reads them too: the model's
constructor arguments are its model_args, "training" its provenance, the rest its operating settings (the
purifier's train_max_timestep and crop were training settings: they become training's max-timestep and crop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 2
KINDS = ("classifier", "detector", "purifier")
MODEL_TYPES = {"classifier": "medfedpure-classifier", "detector": "medfedpure-mae-detector",
               "purifier": "medfedpure-purifier"}
CONFIG_FILES = {"classifier": "config.json", "detector": "config.json", "purifier": "purification.json"}
SECTIONS = ("model_args", "operating", "training")
# Flat purifier files kept two training settings at the top level, under other names.
_FLAT_PURIFIER_TRAINING = {"train_max_timestep": "max-timestep", "crop": "crop"}


@dataclass
class ModelConfig:
    kind: str                                        # classifier | detector | purifier
    model_args: dict = field(default_factory=dict)   # empty for the purifier (diffusers' config.json)
    operating: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose from {KINDS}")

    @property
    def model_type(self) -> str:
        return MODEL_TYPES[self.kind]

    def to_dict(self) -> dict:
        out = {"format_version": FORMAT_VERSION, "model_type": self.model_type}
        if self.kind != "purifier":
            out["model_args"] = dict(self.model_args)
        return {**out, "operating": dict(self.operating), "training": dict(self.training)}

    def flat(self) -> dict:
        """One dict for display (the model card): architecture and operating keys side by side, provenance
        under "training". Read settings from the sections; this view exists for text that names many of them."""
        return {**self.model_args, **self.operating, "training": dict(self.training)}


def _architecture_keys(kind: str, flat: dict) -> tuple[str, ...]:
    if kind == "classifier":
        from medfedpure.models.classifier import CLASSIFIER_ARGS

        return CLASSIFIER_ARGS
    if kind == "detector":
        if flat.get("arch", "vit") == "conv":
            from medfedpure.models.conv_mae import CONV_ARGS

            return CONV_ARGS
        from medfedpure.models.mae import VIT_ARGS

        return VIT_ARGS + ("arch",)
    return ()


def _kind_of(data: dict, kind: str | None) -> str:
    by_type = {v: k for k, v in MODEL_TYPES.items()}
    found = by_type.get(data.get("model_type"))
    if kind and found and found != kind:
        raise ValueError(f"expected a {kind} config, found model_type {data.get('model_type')!r}")
    if not (kind or found):
        raise ValueError(f"config without a known model_type ({data.get('model_type')!r}): pass its kind")
    return kind or found


def from_dict(data: dict, kind: str | None = None) -> ModelConfig:
    """A config file's contents (format 2, or a flat file of before) -> ModelConfig."""
    kind = _kind_of(data, kind)
    if "format_version" in data:
        if int(data["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"config format {data['format_version']} is newer than this code reads "
                             f"({FORMAT_VERSION}): update medfedpure")
        return ModelConfig(kind, *(dict(data.get(s, {})) for s in SECTIONS))
    rest = {k: v for k, v in data.items() if k not in ("model_type", "training")}
    arch_keys = _architecture_keys(kind, rest)
    model_args = {k: rest.pop(k) for k in arch_keys if k in rest}
    if kind == "detector":
        model_args.setdefault("arch", "vit")  # flat detectors before the convolutional MAE are all ViTs
    training = dict(data.get("training", {}))
    if kind == "purifier":
        for old, new in _FLAT_PURIFIER_TRAINING.items():
            if old in rest:
                training.setdefault(new, rest.pop(old))
    return ModelConfig(kind, model_args, rest, training)


def kind_of_folder(folder: str | Path) -> str:
    folder = Path(folder)
    if (folder / CONFIG_FILES["purifier"]).is_file():
        return "purifier"
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return _kind_of(data, None)


def read_config(folder: str | Path, kind: str | None = None) -> ModelConfig:
    """The config of the model in `folder` (kind inferred from its files when not given)."""
    folder = Path(folder)
    kind = kind or kind_of_folder(folder)
    path = folder / CONFIG_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILES[kind]} in {folder}")
    return from_dict(json.loads(path.read_text(encoding="utf-8")), kind)


def config_text(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def write_config(folder: str | Path, config: ModelConfig) -> Path:
    path = Path(folder) / CONFIG_FILES[config.kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(config), encoding="utf-8")
    return path


def save_model(folder: str | Path, state_dict: dict, config: ModelConfig) -> None:
    """Weights (safetensors) and the config of a classifier or detector."""
    from medfedpure.hub import save_weights

    if config.kind == "purifier":
        raise ValueError("the purifier is saved by diffusers (unet.save_pretrained) plus write_config")
    save_weights(folder, state_dict, config.to_dict())


def load_model_state(folder: str | Path, kind: str) -> tuple[dict, ModelConfig]:
    """(state dict, config) of a classifier or detector folder; safetensors only (see hub.load_weights)."""
    from medfedpure.hub import load_weights

    state, raw = load_weights(folder)
    return state, from_dict(raw, kind)


def build_model(config: ModelConfig):
    """The untrained network a config describes, from its recorded architecture arguments."""
    if config.kind == "classifier":
        from medfedpure.models.classifier import build_classifier

        return build_classifier(config.model_args)
    if config.kind == "detector":
        from medfedpure.models.mae import build_mae

        return build_mae(config.model_args)
    raise ValueError("the purifier's UNet is built by diffusers from its own config.json")
