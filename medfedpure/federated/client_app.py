"""The hospital side: one ClientApp for all three models. A node only ever loads its own hospital's scans.

Which scans are "its own": the node's `data-path` (a preprocessed cache; on the deployment engine each
SuperNode is started with its own) and its `hospital` id (`--node-config "hospital=3 data-path=..."`). On the
simulation engine every virtual node shares one cache file and selects its rows by partition id.
Personal state (the classifier's gate, or a whole local-only model) lives in `context.state` between rounds.
"""

from __future__ import annotations

import json
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfedpure.device import pick_device
from medfedpure.federated import resume, steps
from medfedpure.federated.task import build_model, hospital_data, is_ffdnet, shared_state

app = ClientApp()

PERSONAL = "personal"


def _settings(msg: Message) -> dict:
    cfg = dict(msg.content.config_records.get("config", ConfigRecord()))
    cfg["model-config"] = json.loads(cfg["model-config"])
    return cfg


def _hospital(context: Context) -> int:
    node = context.node_config
    if "hospital" in node:
        return int(node["hospital"])
    if "partition-id" in node:  # simulation engine: one virtual node per hospital
        return int(node["partition-id"])
    raise ValueError('this SuperNode has no hospital id: start it with --node-config "hospital=N data-path=..."')


def _data_path(context: Context, cfg: dict) -> str:
    return str(context.node_config.get("data-path", cfg["data-path"]))


def _prepare(msg: Message, context: Context):
    cfg = _settings(msg)
    torch.set_num_threads(int(cfg["client-threads"]))
    hospital = _hospital(context)
    # Seeded: the layers the server does not send (a fresh gate) start the same in every run, whatever the
    # worker process ran before, so a run (and a resumed one) is reproducible.
    torch.manual_seed(int(cfg["seed"]) * 1000 + hospital)
    model = build_model(cfg["model"], cfg["model-config"])
    incoming = msg.content.array_records["arrays"].to_torch_state_dict()
    personal = context.state.array_records.get(PERSONAL)
    if personal is None and cfg.get("resume"):  # a resumed run: the hospital's state from before the stop
        saved = resume.load_personal(resume.resume_dir(cfg["out-dir"], cfg["model"]), hospital)
        personal = ArrayRecord(saved) if saved else None
    if _local_only(cfg) and personal is not None:
        model.load_state_dict(personal.to_torch_state_dict())  # local-only: ignore the global model
    else:
        model.load_state_dict(incoming, strict=False)
        if personal is not None:
            model.load_state_dict(personal.to_torch_state_dict(), strict=False)  # the hospital's own gate
        elif cfg["model"] == "classifier" and cfg.get("init-gates") and cfg.get("init-from"):
            _warm_start_gate(model, cfg["init-from"], hospital)
    return cfg, hospital, model


def _warm_start_gate(model, folder: str, hospital: int) -> None:
    """First round of a fine-tune: the hospital's gate from the checkpoint it continues (stored there as
    `gates.<hospital>.*`); a hospital the checkpoint does not know keeps its fresh gate."""
    from medfedpure.hub import load_weights
    from medfedpure.models.classifier import GATE_PREFIX

    state, _ = load_weights(folder)
    prefix = f"gates.{hospital}."
    gate = {GATE_PREFIX + k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    if gate:
        model.load_state_dict(gate, strict=False)


def _server_round(cfg: dict) -> int:
    """The round (an engine key: the strategy adds it to every train message; absent in a direct call)."""
    return int(cfg.get("server-round", 1)) + int(cfg.get("round-offset", 0))


def _local_only(cfg: dict) -> bool:
    """A classifier trained without federation (mode local): each hospital keeps its whole model."""
    return cfg["model"] == "classifier" and cfg["mode"] == "local"


def _keep_personal(model, cfg: dict, context: Context, hospital: int) -> None:
    if _local_only(cfg):
        state = model.state_dict()
    elif hasattr(model, "personal_state") and model.personal_state():
        state = model.personal_state()
    else:
        return
    context.state[PERSONAL] = ArrayRecord(state)
    resume.save_personal(resume.resume_dir(cfg["out-dir"], cfg["model"]), hospital, state)


def _round_lr(cfg: dict) -> float:
    """Cosine decay of the local learning rate over the federated rounds (constant with lr-schedule=constant)."""
    lr = float(cfg["lr"])
    if cfg["lr-schedule"] != "cosine":
        return lr
    r, total = _server_round(cfg), max(int(cfg["num-rounds"]), 1)
    return lr * 0.5 * (1 + math.cos(math.pi * (r - 1) / total))


def _inject_faults(cfg: dict, hospital: int, state: dict) -> dict:
    """Test hooks that simulate a broken hospital: drop out, send NaNs, or send a hugely scaled update."""
    if int(cfg["fault-drop-hospital"]) == hospital:
        raise RuntimeError(f"hospital {hospital} dropped out (fault injection)")
    if int(cfg["fault-nan-hospital"]) == hospital:
        state = {k: (v.float() * float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    if int(cfg["fault-scale-hospital"]) == hospital:
        state = {k: (v * 1e4) if v.is_floating_point() else v for k, v in state.items()}
    return state


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, hospital, model = _prepare(msg, context)
    data = hospital_data(_data_path(context, cfg), hospital, cfg)
    device = pick_device(cfg["device"])
    seed = int(cfg["seed"]) * 1000 + _server_round(cfg) * 17 + hospital
    kind = cfg["model"]
    if kind == "classifier":
        weights = sampling = None
        balance = cfg["class-balance"]
        if balance == "balanced":
            weights = steps.balanced_class_weights(data.train_y, int(model.config["num_classes"]))
        elif balance == "sampled":
            sampling = steps.stratum_sampling_weights(data.train_y, data.train_sources)
        elif balance != "none":
            raise ValueError(f"unknown class-balance {balance!r}; choose sampled, balanced or none")
        metrics = steps.train_classifier(model, data.train_x, data.train_y, epochs=int(cfg["local-epochs"]),
                                         lr=_round_lr(cfg), batch_size=int(cfg["batch-size"]), seed=seed,
                                         device=device, class_weights=weights, sample_weights=sampling,
                                         tumour_types=data.train_types, type_weight=float(cfg["type-weight"]),
                                         augmentation=str(cfg["augmentation"]),
                                         adversarial=steps.Adversarial(float(cfg["adversarial-eps"]),
                                                                       float(cfg["adversarial-fraction"]),
                                                                       int(cfg["adversarial-steps"])))
    elif kind == "mae":
        metrics = steps.train_mae(model, data.train_x, epochs=int(cfg["local-epochs"]), lr=_round_lr(cfg),
                                  batch_size=int(cfg["batch-size"]), seed=seed, device=device,
                                  crop=int(cfg["crop"]))
    elif is_ffdnet(cfg["model-config"]):
        n_steps = max(1, round(float(cfg["local-epochs"]) * len(data.train_x) / int(cfg["batch-size"])))
        metrics = steps.train_ffdnet(model, data.train_x, steps=n_steps, lr=_round_lr(cfg),
                                     batch_size=int(cfg["batch-size"]), crop=int(cfg["crop"]),
                                     min_timestep=int(cfg["min-timestep"]), max_timestep=int(cfg["max-timestep"]),
                                     seed=seed, device=device, ema_decay=float(cfg["ema-decay"]))
    else:
        n_steps = max(1, round(float(cfg["local-epochs"]) * len(data.train_x) / int(cfg["batch-size"])))
        metrics = steps.train_purifier(model, data.train_x, steps=n_steps, lr=_round_lr(cfg),
                                       batch_size=int(cfg["batch-size"]), crop=int(cfg["crop"]),
                                       max_timestep=int(cfg["max-timestep"]), seed=seed, device=device,
                                       ema_decay=float(cfg["ema-decay"]))
    model.cpu()
    _keep_personal(model, cfg, context, hospital)
    state = _inject_faults(cfg, hospital, shared_state(model))
    metrics = {**metrics, "hospital": hospital, "num-examples": len(data.train_x)}
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, hospital, model = _prepare(msg, context)
    with_test = bool(cfg.get("eval-test", False))  # an engine key: the strategy sets it on the last round
    data = hospital_data(_data_path(context, cfg), hospital, cfg, with_test=with_test)
    device = pick_device(cfg["device"])
    kind = cfg["model"]
    out: dict = {"hospital": hospital, "num-examples": len(data.val_x)}
    if kind == "classifier":
        val = steps.evaluate_classifier(model, data.val_x, data.val_y, device=device)
        out.update({"val-accuracy": val["accuracy"], "val-loss": val["loss"],
                    "val-balanced-accuracy": val["balanced-accuracy"]})
        if with_test and data.test_x is not None and len(data.test_x):
            test = steps.evaluate_classifier(model, data.test_x, data.test_y, device=device)
            out.update({"test-accuracy": test["accuracy"], "test-n": test["num-examples"]})
    elif kind == "mae":
        out["val-loss"] = steps.evaluate_mae(model, data.val_x, device=device)["loss"]
    elif is_ffdnet(cfg["model-config"]):
        val = steps.evaluate_ffdnet(model, data.val_x, min_timestep=int(cfg["min-timestep"]),
                                    max_timestep=int(cfg["max-timestep"]), device=device)
        out.update({"val-loss": val["loss"], "val-psnr": val["psnr"]})
    else:
        out["val-loss"] = steps.evaluate_purifier(model, data.val_x, device=device)["loss"]
    return Message(RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Release step after training: the hospital publishes what the shipped checkpoint needs from it.

    Classifier: its personalised gate (so the demo can offer every hospital's model). Detector: its threshold
    calibrated on its own clean scans (setting calibration-scans), plus score quantiles; never the scans themselves.
    """
    cfg, hospital, model = _prepare(msg, context)
    content = RecordDict()
    if cfg["model"] == "classifier" and not _local_only(cfg):
        content["personal"] = ArrayRecord(model.personal_state()) if model.personal_state() else ArrayRecord()
    if cfg["model"] == "mae":
        from medfedpure.federated.task import calibrate_hospital, calibration_scans

        data = hospital_data(_data_path(context, cfg), hospital, cfg)
        scans = calibration_scans(data, cfg)
        content["calibration"] = MetricRecord(calibrate_hospital(model, scans, cfg, pick_device(cfg["device"])))
    content["metrics"] = MetricRecord({"hospital": hospital, "num-examples": len(msg.content.array_records)})
    return Message(content, reply_to=msg)
