"""The server side: FedAvg rounds over the hospitals, records, plot and the checkpoint.

`run_training(grid, settings)` is the whole job; the module-level `app` runs it with the run config from
`pyproject.toml` (`flwr run .`), and `medfedpure train` runs it on Flower's simulation engine.
"""

from __future__ import annotations

import json
import math
import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from medfedpure.federated import resume
from medfedpure.federated import settings as run_settings
from medfedpure.federated.records import save_history
from medfedpure.federated.strategy import RobustFedAvg
from medfedpure.federated.task import build_model, shared_state


def _train_config(settings: dict) -> ConfigRecord:
    flat = {k: v for k, v in settings.items() if k != "model-config" and not isinstance(v, dict)}
    flat["model-config"] = json.dumps(settings["model-config"])
    return ConfigRecord(flat)


def _release(grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float) -> list[Message]:
    """Ask every hospital for what it publishes with the final checkpoint (gates, detector calibration)."""
    node_ids = list(grid.get_node_ids())
    messages = [Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in node_ids]
    replies = [r for r in grid.send_and_receive(messages, timeout=timeout) if not r.has_error()]
    if len(replies) < len(node_ids):
        log(WARNING, "Release: %d of %d hospitals answered", len(replies), len(node_ids))
    return replies


def _warm_start(model, kind: str, folder: Path) -> None:
    """Continue from an earlier run's shared weights (the hospitals' gates restart from scratch)."""
    if kind == "purifier" and hasattr(model, "ffdnet"):  # an FFDNet purifier folder (ffdnet.safetensors)
        from medfedpure.models.purifier import load_ffdnet_purifier
        from medfedpure.checkpoint_format import read_config

        own = read_config(folder, "purifier").operating.get("ffdnet", {})
        model.ffdnet.load_state_dict(load_ffdnet_purifier(folder, settings=own).ffdnet.state_dict())
        log(INFO, "Warm start from %s", folder)
        return
    if kind == "purifier":
        from diffusers import UNet2DModel

        model.unet.load_state_dict(UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False).state_dict())
        return
    from medfedpure.hub import load_weights

    state, _ = load_weights(folder)
    model.load_state_dict({k: v.float() for k, v in state.items() if not k.startswith("gates.")}, strict=False)
    log(INFO, "Warm start from %s", folder)


def run_training(grid: Grid, settings: dict) -> dict:
    kind = settings["model"]
    torch.manual_seed(int(settings["seed"]))
    model = build_model(kind, settings["model-config"])
    if settings["init-from"]:
        _warm_start(model, kind, Path(settings["init-from"]))
    n = int(settings["num-hospitals"])
    min_nodes = max(1, math.ceil(float(settings["min-fraction"]) * n))
    folder = resume.resume_dir(settings["out-dir"], kind)
    saved = resume.load_server(folder, settings) if settings.get("resume") else None
    done = 0
    if saved is not None:
        done = int(saved["round"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()},
                              strict=False)
        log(INFO, "Resuming %s from round %d of %d (%s)", kind, done, int(settings["num-rounds"]), folder)
    total = int(settings["num-rounds"])

    before = float(saved.get("train_seconds", 0.0)) if saved is not None else 0.0  # earlier sittings' time

    def checkpoint_round(round_done: int, arrays: ArrayRecord, strat: RobustFedAvg) -> None:
        resume.save_server(folder, round_done, arrays.to_torch_state_dict(), strat.records, strat.rejected, settings,
                           train_seconds=before + time.time() - started)

    strategy = RobustFedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes, max_norm_ratio=float(settings["max-norm-ratio"]),
        num_rounds=total, round_offset=done, on_round_end=checkpoint_round if total else None,
    )
    if saved is not None:
        strategy.records, strategy.rejected = list(saved["records"]), list(saved["rejected"])
    config = _train_config(settings)
    started = time.time()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(shared_state(model)),
                            num_rounds=max(total - done, 0), timeout=float(settings["round-timeout"]),
                            train_config=config, evaluate_config=config)
    train_seconds = before + time.time() - started
    if total - done <= 0:
        # A calibration-only run (with init-from), or a resumed run whose rounds are all done: no training, the
        # hospitals only answer the release step (a stopped run is released this way from its last round).
        final = ArrayRecord(shared_state(model))
    elif not any(r["phase"] == "train" for r in strategy.records):
        raise RuntimeError("no hospital completed a training round; nothing to save (see the Flower log)")
    else:
        final = result.arrays
        model.load_state_dict(final.to_torch_state_dict(), strict=False)
    replies = _release(grid, final, config, float(settings["round-timeout"]))

    out_dir = Path(settings["out-dir"]) / kind
    summary = {"model": kind, "settings": settings, "train_seconds": round(train_seconds, 1),
               "rejected_updates": strategy.rejected}
    from medfedpure.federated.checkpoint import write_checkpoint

    write_checkpoint(out_dir, kind, model, settings, replies, summary)
    save_history(out_dir, strategy.records, kind, summary)
    log(INFO, "Saved %s checkpoint and records to %s (%.0f s of training)", kind, out_dir, train_seconds)
    return summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run .`: pyproject's run config holds the model and the settings every model shares; the model's
    own settings travel in `set` (`--run-config 'model="mae" set="lr=0.002 num-rounds=3"'`)."""
    cfg = dict(context.run_config)
    kind = str(cfg.pop("model"))
    per_model = run_settings.parse_assignments(cfg.pop("set"))
    overrides = {**cfg, **per_model}
    run_training(grid, {**run_settings.resolve(kind, overrides), "engine": "flower-deployment"})
