"""The checkpoint format (medfedpure/checkpoint_format.py): sections, the reader of the older flat files, models
built from their recorded arguments, and the same pipeline from either layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from medfedpure import checkpoint_format as fmt

ROOT = Path(__file__).resolve().parents[1]


def _tiny(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_checkpoint(tmp_path / "ckpt")


def _flatten(folder: Path) -> None:
    """Rewrite a checkpoint's configs in the flat layout of before format 2 (every key at the top level)."""
    for kind in fmt.KINDS:
        cfg = fmt.read_config(folder / kind, kind)
        flat = cfg.flat()
        if kind == "purifier":  # these two were top-level keys then
            flat.update({"train_max_timestep": 300, "crop": 64})
        else:
            flat["model_type"] = cfg.model_type
            if kind == "detector":
                flat.pop("arch")  # flat ViT detectors had no arch key
        (folder / kind / fmt.CONFIG_FILES[kind]).write_text(json.dumps(flat))


def test_shipped_flat_configs_read_into_sections():
    clf = fmt.read_config(ROOT / "pretrained" / "classifier")
    assert clf.kind == "classifier" and "hospitals" in clf.operating and "ood" in clf.operating
    assert set(clf.model_args) <= {"num_classes", "num_experts", "width", "gate_width", "expert_type", "norm",
                                   "num_types", "input_norm"}
    assert fmt.build_model(clf).config == clf.model_args  # the model records exactly what it was built from
    det = fmt.read_config(ROOT / "pretrained" / "detector")
    assert det.model_args["arch"] in ("vit", "conv") and "calibration" in det.operating
    assert "num-rounds" in det.training and "calibration" not in det.model_args
    pur = fmt.read_config(ROOT / "pretrained" / "purifier")
    assert set(pur.operating) == {"t_min", "t_max", "ddim_steps"} and "max-timestep" in pur.training


def test_sections_round_trip_and_reject_what_they_cannot_read(tmp_path):
    cfg = fmt.ModelConfig("detector", {"arch": "conv", "width": 8}, {"score": "mean_abs_error"}, {"lr": 0.1})
    data = json.loads(fmt.config_text(cfg))
    assert data == {"format_version": fmt.FORMAT_VERSION, "model_type": "medfedpure-mae-detector",
                    "model_args": {"arch": "conv", "width": 8}, "operating": {"score": "mean_abs_error"},
                    "training": {"lr": 0.1}}
    assert fmt.from_dict(data) == cfg
    fmt.write_config(tmp_path, fmt.ModelConfig("purifier", {}, {"t_min": 1}))
    assert fmt.kind_of_folder(tmp_path) == "purifier" and fmt.read_config(tmp_path).operating == {"t_min": 1}
    with pytest.raises(ValueError, match="newer"):
        fmt.from_dict({**data, "format_version": fmt.FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="expected a classifier"):
        fmt.from_dict(data, "classifier")
    with pytest.raises(ValueError, match="not classifier arguments"):
        fmt.build_model(fmt.ModelConfig("classifier", {"width": 8, "hospitals": [0]}))


def test_pipeline_loads_the_same_from_sectioned_and_flat_configs(tmp_path):
    from medfedpure.hub import write_manifest
    from medfedpure.pipeline import MedFedPure

    sectioned = _tiny(tmp_path / "a")
    assert json.loads((sectioned / "classifier" / "config.json").read_text())["format_version"] == 2
    flat = _tiny(tmp_path / "b")
    _flatten(flat)
    write_manifest(flat)
    assert "format_version" not in json.loads((flat / "detector" / "config.json").read_text())
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    outs = []
    for folder in (sectioned, flat):
        pipe = MedFedPure.from_pretrained(folder, device="cpu")
        assert pipe.hospitals == [0, 1] and (pipe.t_min, pipe.t_max, pipe.ddim_steps) == (40, 160, 2)
        outs.append([s.summary() for s in pipe.analyze(x, hospital=1, purify="always")])
    for a, b in zip(*outs):
        a.pop("timings_ms"), b.pop("timings_ms")
        assert a == b


def test_release_writes_sections_from_a_flat_run(tmp_path):
    from medfedpure.release import _copy_run

    flat = _tiny(tmp_path)
    _flatten(flat)
    for kind in fmt.KINDS:
        _copy_run(flat / kind, tmp_path / "out" / kind)
        data = json.loads((tmp_path / "out" / kind / fmt.CONFIG_FILES[kind]).read_text())
        assert data["format_version"] == fmt.FORMAT_VERSION and data["model_type"] == fmt.MODEL_TYPES[kind]
        assert fmt.from_dict(data) == fmt.read_config(flat / kind, kind)
    assert fmt.read_config(tmp_path / "out" / "purifier").training["max-timestep"] == 300


def test_a_runs_settings_become_the_sections():
    from medfedpure.federated import settings as run_settings
    from medfedpure.federated.checkpoint import model_config, training_provenance
    from medfedpure.federated.task import build_model

    settings = {**run_settings.resolve("purifier", {"t-max": 120, "ddim-steps": 2}), "engine": "flower-simulation"}
    training = training_provenance(settings, 12.5)
    cfg = model_config("purifier", None, settings, training)
    assert cfg.operating == {"t_min": 40, "t_max": 120, "ddim_steps": 2}  # `--set t-max=120` reaches it
    assert training["max-timestep"] == 300 and training["train_seconds"] == 12.5 and "t-max" not in training
    assert not {"data-path", "out-dir", "device", "model-config"} & set(training)
    settings = {**run_settings.resolve("mae", {"model-config": {"width": 8}}), "engine": "flower-simulation"}
    mae = build_model("mae", settings["model-config"])
    cfg = model_config("mae", mae, settings, training_provenance(settings, 1.0), calibration={"1": {}, "0": {}})
    assert cfg.model_args == mae.config and list(cfg.operating["calibration"]) == ["0", "1"]
    assert cfg.operating["score"] == settings["score"] and "score" not in cfg.training


def test_a_fine_tune_records_what_it_continued_and_the_total_compute():
    from medfedpure.federated.checkpoint import _warm_start_provenance

    start = fmt.read_config(ROOT / "pretrained" / "purifier", "purifier").training
    got = _warm_start_provenance(str(ROOT / "pretrained" / "purifier"), "purifier", 100.0)
    before = float(start.get("total_train_seconds", start["train_seconds"]))
    assert got["total_train_seconds"] == round(before + 100.0, 1)
    assert got["warm_start"]["crop"] == start["crop"] and "warm_start" not in got["warm_start"]
    assert _warm_start_provenance(str(ROOT / "no-such-run"), "purifier", 1.0) == {}
