"""The federated pieces: training steps, update screening, the ClientApp called directly, Flower simulation runs.

Data: the six example scans shipped in assets/examples, copied once per hospital (hospitals 0 and 1, each with
4 train and 2 val scans) and cached with `medfedpure.data.build_cache`. Models are tiny.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict

from medfedpure import data as D
from medfedpure.federated import settings as run_settings
from medfedpure.federated import steps
from medfedpure.federated.strategy import RobustFedAvg, screen_updates, update_norm
from medfedpure.federated.task import build_model, shared_state
from medfedpure.models.classifier import GATE_PREFIX

# The from-scratch ResNet (tiny) keeps these tests fast; the pretrained trunk has tests of its own (test_models).
TINY_CLASSIFIER = {"num_classes": 2, "num_experts": 2, "width": 4, "gate_width": 4, "trunk": "resnet18",
                   "geometry": "pad"}
VAL_SCANS = ("y1493.jpg", "no427.jpg")


def make_example_caches(root: Path, examples: Path, hospitals=(0, 1)) -> dict:
    """Copy the example scans once per hospital; write one split + cache per hospital and one for all of them.

    Returns {"all": cache with every hospital, h: cache with hospital h only} (paths).
    """
    rows: dict[int, list[D.SplitRow]] = {}
    group = 0
    for h in hospitals:
        rows[h] = []
        # the six Br35H examples (no*.jpg, y*.jpg); the other sources' examples have other names
        for src in sorted(f for f in examples.glob("*.jpg") if f.name.startswith(("no", "y"))):
            rel = f"h{h}/{src.name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / rel)
            split = "val" if src.name in VAL_SCANS else "train"
            label = 1 if src.name.startswith("y") else 0
            rows[h].append(D.SplitRow(rel, D.file_sha256(root / rel), label, split, h, group))
            group += 1
    out: dict = {}
    for h in hospitals:
        D.write_split(rows[h], root / f"split-{h}.csv")
        D.build_cache(root, root / f"split-{h}.csv", root / f"site-{h}.npz")
        out[h] = root / f"site-{h}.npz"
    D.write_split([r for h in hospitals for r in rows[h]], root / "split-all.csv")
    D.build_cache(root, root / "split-all.csv", root / "all.npz")
    out["all"] = root / "all.npz"
    return out


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict:
    examples = Path(__file__).resolve().parents[1] / "assets" / "examples"
    return make_example_caches(tmp_path_factory.mktemp("fed-data"), examples)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as each hospital's ClientApp uses (two threads fight over this machine's cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def task_identity(monkeypatch):
    """Messages built outside a Flower process need a run/task identity (Flower sets it in its own processes)."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in {"_run_id": 1, "_task_id": 1, "_node_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, key, value)


@pytest.fixture(scope="module")
def scans(caches):
    x, y = D.load_cache(caches[0]).select()
    return x, y


# ---------------------------------------------------------------------------------------------------------
# the Flower app's run config (pyproject.toml) must stay in step with settings.py


def test_pyproject_run_config_mirrors_settings():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "medfedpure.federated.server_app:app",
                                 "clientapp": "medfedpure.federated.client_app:app"}
    assert app["publisher"] == "medfedpure" and pyproject["project"]["dependencies"] == []
    assert "federations" not in pyproject["tool"]["flwr"]  # flwr 1.42 would move it out by rewriting the file
    # Only what every model shares (so no model's defaults pose as overrides of another's), the model, and `set`.
    config = dict(app["config"])
    expected = {**run_settings.COMMON, "model": "classifier", "set": ""}
    assert config == expected
    assert {k: type(v) for k, v in config.items()} == {k: type(v) for k, v in expected.items()}
    # The deployment harness (a local test and ops tool) is not part of the bundle the SuperNodes receive.
    assert app["fab-exclude"] == ["medfedpure/federated/deployment.py"]


def test_server_app_reads_the_model_and_its_own_settings_from_set(monkeypatch):
    from flwr.app import Context, RecordDict

    from medfedpure.federated import server_app

    seen = {}
    monkeypatch.setattr(server_app, "run_training", lambda grid, settings: seen.update(settings))
    run_config = {**run_settings.COMMON, "model": "purifier", "set": "num-rounds=2 t-max=120"}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_app.main(None, context)
    assert seen["num-rounds"] == 2 and seen["t-max"] == 120 and seen["t-min"] == 40
    assert seen["engine"] == "flower-deployment" and "set" not in seen


def test_run_config_set_parses_pairs_and_json_and_rejects_unknown_keys():
    assert run_settings.parse_assignments("lr=0.002 num-rounds=3 'model-config={\"width\": 8}' score=x") == {
        "lr": 0.002, "num-rounds": 3, "model-config": {"width": 8}, "score": "x"}
    assert run_settings.parse_assignments('{"lr": 0.1}') == {"lr": 0.1} and run_settings.parse_assignments("") == {}
    with pytest.raises(ValueError, match="expected key=value"):
        run_settings.parse_assignments("lr")
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        run_settings.resolve("classifier", run_settings.parse_assignments("lrr=0.002"))
    # the purification range is a setting of the purifier, so --set / set= reach it
    with pytest.raises(ValueError, match="setting of the purifier model"):
        run_settings.resolve("classifier", {"t-min": 10})


# ---------------------------------------------------------------------------------------------------------
# training steps


def test_cache_has_both_hospitals(caches):
    cache = D.load_cache(caches["all"])
    assert cache.hospitals == [0, 1]
    assert cache.counts()["train"] == {0: {0: 2, 1: 2}, 1: {0: 2, 1: 2}}
    assert D.load_cache(caches[1]).hospitals == [1]


def test_train_classifier_reduces_loss(scans):
    x, y = scans
    torch.manual_seed(0)
    model = build_model("classifier", {**TINY_CLASSIFIER, "width": 16})
    before = steps.evaluate_classifier(model, x, y)["loss"]
    losses = [steps.train_classifier(model, x, y, epochs=1, lr=3e-3, batch_size=8, seed=e)["loss"] for e in range(15)]
    after = steps.evaluate_classifier(model, x, y)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < losses[0], losses
    assert after["loss"] < 0.7 * before, (before, after)
    assert after["num-examples"] == len(x)


def test_pgd_batch_stays_in_the_ball_and_raises_the_loss(scans):
    x, y = scans
    torch.manual_seed(0)
    model = build_model("classifier", {**TINY_CLASSIFIER, "width": 16})
    for e in range(3):
        steps.train_classifier(model, x, y, epochs=1, lr=3e-3, batch_size=8, seed=e)
    model.train()
    eps = 8 / 255
    adv = steps.pgd_batch(model, x, y, eps, 5, torch.Generator().manual_seed(0))
    assert model.training  # the attack switches to eval mode and back
    assert not adv.requires_grad and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    model.eval()
    with torch.no_grad():
        clean_loss = torch.nn.functional.nll_loss(model(x), y).item()
        adv_loss = torch.nn.functional.nll_loss(model(adv), y).item()
    assert adv_loss > clean_loss + 0.05, (clean_loss, adv_loss)
    again = steps.pgd_batch(model, x, y, eps, 5, torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)  # seeded


def test_adversarial_training_makes_the_model_harder_to_attack(scans):
    """Same seeds and epochs; the adversarially trained model loses less under the same PGD."""
    x, y = scans

    def trained(adversarial):
        torch.manual_seed(0)
        model = build_model("classifier", {**TINY_CLASSIFIER, "width": 16})
        for e in range(12):
            out = steps.train_classifier(model, x, y, epochs=1, lr=3e-3, batch_size=8, seed=e, adversarial=adversarial)
            assert math.isfinite(out["loss"])
        return model.eval()

    eps = 8 / 255
    losses = {}
    for name, adv in (("plain", steps.Adversarial()), ("adversarial", steps.Adversarial(eps, 0.5, 3))):
        model = trained(adv)
        xa = steps.pgd_batch(model, x, y, eps, 7, torch.Generator().manual_seed(1))
        with torch.no_grad():
            losses[name] = torch.nn.functional.nll_loss(model(xa), y).item()
    assert losses["adversarial"] < losses["plain"], losses


def test_balanced_class_weights_equalise_classes():
    labels = torch.tensor([1] * 8 + [0] * 2)
    w = steps.balanced_class_weights(labels, 2)
    # each class's total weight is the same: 2 * w0 == 8 * w1
    assert torch.allclose(2 * w[0], 8 * w[1])
    assert torch.allclose(w, torch.tensor([2.5, 0.625]))
    # a class the hospital never saw gets a finite weight (it never enters the loss), and weights are capped
    assert torch.isfinite(steps.balanced_class_weights(torch.ones(5, dtype=torch.long), 2)).all()
    assert steps.balanced_class_weights(torch.tensor([0] + [1] * 99), 2, max_weight=10.0)[0] == 10.0


def test_balanced_loss_raises_the_minority_class(scans):
    """On a 1-to-4 label mix the weighted loss pushes the minority class up more than the plain loss does."""
    x, y = scans
    skew = torch.cat([torch.nonzero(y == 0).flatten()[:1], torch.nonzero(y == 1).flatten()[:4]])
    xs, ys = x[skew], y[skew]

    def minority_probability(weights):
        torch.manual_seed(0)
        model = build_model("classifier", {**TINY_CLASSIFIER, "width": 16})
        for e in range(4):
            steps.train_classifier(model, xs, ys, epochs=1, lr=3e-3, batch_size=5, seed=e, class_weights=weights)
        return steps.predict_log_proba(model, xs).exp()[:, 0].mean().item()

    plain, balanced = minority_probability(None), minority_probability(steps.balanced_class_weights(ys, 2))
    assert balanced > plain + 0.02, (plain, balanced)


def test_train_mae_and_purifier_return_finite_loss(scans):
    x, _ = scans
    torch.manual_seed(0)
    mae = build_model("mae", {"image_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 1, "heads": 2,
                              "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.75})
    out = steps.train_mae(mae, x, epochs=1, batch_size=4)
    assert math.isfinite(out["loss"]) and out["loss"] > 0 and out["num-examples"] == len(x)
    assert math.isfinite(steps.evaluate_mae(mae, x)["loss"])

    purifier = build_model("purifier", {"block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4})
    out = steps.train_purifier(purifier, x, steps=2, batch_size=2, crop=32, max_timestep=50)
    assert math.isfinite(out["loss"]) and out["loss"] > 0 and out["num-examples"] == len(x)
    assert math.isfinite(steps.evaluate_purifier(purifier, x[:2], max_timestep=50)["loss"])


def test_augment_keeps_shape_and_range(scans):
    x, _ = scans
    out = steps.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    again = steps.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: the same generator state gives the same augmentation


# ---------------------------------------------------------------------------------------------------------
# update screening


def _state_np(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in shared_state(model).items()}


def _perturbed(reference: dict[str, np.ndarray], seed: int, scale: float = 1.0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in reference.items():
        if np.issubdtype(v.dtype, np.floating):
            out[k] = torch.from_numpy(np.asarray((v + 1e-3 * rng.standard_normal(v.shape)) * scale, dtype=v.dtype))
        else:
            out[k] = torch.from_numpy(v.copy())
    return ArrayRecord(out)


def test_update_norm_and_screening():
    torch.manual_seed(0)
    reference = _state_np(build_model("classifier", TINY_CLASSIFIER))
    normal = [update_norm(_perturbed(reference, s), reference) for s in range(3)]
    scaled = update_norm(_perturbed(reference, 3, scale=1e4), reference)  # what fault-scale-hospital sends
    nan_arrays = {k: torch.from_numpy(v.copy()) for k, v in reference.items()}
    first_float = next(k for k, v in reference.items() if np.issubdtype(v.dtype, np.floating))
    nan_arrays[first_float] = nan_arrays[first_float] * float("nan")
    nan = update_norm(ArrayRecord(nan_arrays), reference)

    assert all(0 < n < 1 for n in normal)
    assert nan == float("inf")
    assert scaled > 1e3 * max(normal)
    assert update_norm(ArrayRecord({k: torch.from_numpy(v) for k, v in reference.items()}), reference) == 0.0
    assert screen_updates(normal + [scaled, nan], max_ratio=10.0) == [True, True, True, False, False]
    assert screen_updates([nan, nan], 10.0) == [False, False]
    assert screen_updates([0.0, 0.0], 10.0) == [True, True]


def test_strategy_aggregates_only_accepted_updates(task_identity):
    torch.manual_seed(0)
    model = build_model("classifier", TINY_CLASSIFIER)
    reference = _state_np(model)
    strategy = RobustFedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1, max_norm_ratio=10.0)
    strategy._reference = reference
    replies = []
    for hospital, arrays in enumerate([_perturbed(reference, 0), _perturbed(reference, 1),
                                       _perturbed(reference, 2, scale=1e4)]):
        instruction = Message(RecordDict({"arrays": ArrayRecord(shared_state(model))}), dst_node_id=hospital + 10,
                              message_type=MessageType.TRAIN)
        metrics = MetricRecord({"hospital": hospital, "num-examples": 4, "loss": 0.5})
        replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=instruction))
    arrays, _metrics = strategy.aggregate_train(1, replies)
    assert [r["hospital"] for r in strategy.rejected] == [2]
    assert [r["hospital"] for r in strategy.records] == [0, 1]
    merged = arrays.to_torch_state_dict()
    expected = {k: (replies[0].content["arrays"][k].numpy() + replies[1].content["arrays"][k].numpy()) / 2
                for k in reference if np.issubdtype(reference[k].dtype, np.floating)}
    for k, v in expected.items():
        np.testing.assert_allclose(merged[k].numpy(), v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the ClientApp, called directly


def _client_message(model, settings: dict, kind: str) -> Message:
    from medfedpure.federated.server_app import _train_config

    content = RecordDict({"arrays": ArrayRecord(shared_state(model)), "config": _train_config(settings)})
    return Message(content, dst_node_id=1, message_type=kind)


def _gate(state_record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state_record.to_torch_state_dict().items()}


def test_client_app_keeps_gate_in_context_state(caches, task_identity):
    from medfedpure.federated import client_app

    settings = run_settings.resolve("classifier", {"model-config": TINY_CLASSIFIER, "local-epochs": 1,
                                                   "batch-size": 4, "seed": 0})
    context = Context(run_id=1, node_id=1, node_config={"hospital": 1, "data-path": str(caches[1])},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    server_model = build_model("classifier", settings["model-config"])

    reply = client_app.train(_client_message(server_model, settings, MessageType.TRAIN), context)
    sent = set(reply.content["arrays"].keys())
    assert sent == set(shared_state(server_model))
    assert not any(k.startswith(GATE_PREFIX) for k in sent)  # the gate never leaves the hospital
    metrics = reply.content["metrics"]
    assert metrics["hospital"] == 1 and metrics["num-examples"] == 4 and math.isfinite(metrics["loss"])
    assert client_app.PERSONAL in context.state.array_records
    gate1 = _gate(context.state[client_app.PERSONAL])
    assert gate1 and all(k.startswith(GATE_PREFIX) for k in gate1)
    fresh_gate = {k: v for k, v in server_model.state_dict().items() if k.startswith(GATE_PREFIX)}
    assert any(not torch.equal(gate1[k], fresh_gate[k]) for k in gate1)  # it was trained

    # Evaluation uses the stored gate and leaves it alone; its reply carries metrics only.
    ev = client_app.evaluate(_client_message(server_model, settings, MessageType.EVALUATE), context)
    assert not ev.content.array_records
    assert ev.content["metrics"]["hospital"] == 1 and ev.content["metrics"]["num-examples"] == 2
    assert 0.0 <= ev.content["metrics"]["val-accuracy"] <= 1.0
    assert all(torch.equal(v, _gate(context.state[client_app.PERSONAL])[k]) for k, v in gate1.items())

    # A second round with lr=0 starts from the stored gate (not the server's fresh one) and keeps it.
    frozen = {**settings, "lr": 0.0, "server-round": 2}
    reply2 = client_app.train(_client_message(server_model, frozen, MessageType.TRAIN), context)
    assert not any(k.startswith(GATE_PREFIX) for k in reply2.content["arrays"].keys())
    gate2 = _gate(context.state[client_app.PERSONAL])
    assert gate2.keys() == gate1.keys()
    assert all(torch.equal(gate1[k], gate2[k]) for k in gate1)

    # The release step publishes the gate (for the shipped checkpoint), and nothing else of the model.
    released = client_app.query(_client_message(server_model, settings, MessageType.QUERY), context)
    personal = released.content["personal"].to_torch_state_dict()
    assert personal.keys() == gate1.keys()


def test_client_app_faults(caches, task_identity):
    from medfedpure.federated import client_app

    context = Context(run_id=1, node_id=1, node_config={"hospital": 0, "data-path": str(caches[0])},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    model = build_model("classifier", TINY_CLASSIFIER)
    base = run_settings.resolve("classifier", {"model-config": TINY_CLASSIFIER, "local-epochs": 1, "batch-size": 4})
    reply = client_app.train(_client_message(model, {**base, "fault-nan-hospital": 0}, MessageType.TRAIN), context)
    reference = {k: v.numpy() for k, v in shared_state(model).items()}
    assert update_norm(reply.content["arrays"], reference) == float("inf")
    with pytest.raises(RuntimeError, match="dropped out"):
        client_app.train(_client_message(model, {**base, "fault-drop-hospital": 0}, MessageType.TRAIN), context)


# ---------------------------------------------------------------------------------------------------------
# Flower simulation engine (Ray): 2 hospitals, 1 round, tiny model


@pytest.fixture
def ray_tmp():
    """A private, short Ray temp folder (Ray's socket paths must stay under ~107 characters)."""
    path = tempfile.mkdtemp(prefix="mfp-ray-")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    yield path
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
    shutil.rmtree(path, ignore_errors=True)


def _simulate(caches, out_dir: Path, **overrides) -> dict:
    from medfedpure.federated.simulation import simulate

    settings = {"num-hospitals": 2, "num-rounds": 1, "local-epochs": 1, "batch-size": 4, "min-fraction": 1.0,
                "model-config": json.dumps(TINY_CLASSIFIER), "data-path": str(caches["all"]),
                "out-dir": str(out_dir), "round-timeout": 600.0, **overrides}
    return simulate("classifier", settings, cpus=2)


def _history(out_dir: Path) -> dict:
    return json.loads((out_dir / "classifier" / "history.json").read_text())


def test_simulation_rejects_nan_hospital(caches, tmp_path, ray_tmp):
    summary = _simulate(caches, tmp_path, **{"fault-nan-hospital": 1})
    assert [r["hospital"] for r in summary["rejected_updates"]] == [1]
    assert summary["rejected_updates"][0]["update_norm"] == float("inf")
    history = _history(tmp_path)
    assert [r["hospital"] for r in history["records"] if r["phase"] == "train"] == [0]
    assert sorted(r["hospital"] for r in history["records"] if r["phase"] == "evaluate") == [0, 1]
    assert (tmp_path / "classifier" / "model.safetensors").is_file()


def test_simulation_survives_a_dropped_hospital(caches, tmp_path, ray_tmp):
    summary = _simulate(caches, tmp_path, **{"fault-drop-hospital": 1, "min-fraction": 0.5})
    assert summary["rejected_updates"] == []
    history = _history(tmp_path)
    assert [r["hospital"] for r in history["records"] if r["phase"] == "train"] == [0]
    assert (tmp_path / "classifier" / "model.safetensors").is_file()


def test_calibration_scans_include_training_scans_only_for_model_free_statistics():
    from medfedpure.federated.task import HospitalData, calibration_scans

    data = HospitalData(torch.zeros(5, 1, 8, 8), torch.zeros(5), torch.ones(3, 1, 8, 8), torch.zeros(3))
    assert calibration_scans(data, {"calibration-scans": "val"}).shape[0] == 3
    both = calibration_scans(data, {"calibration-scans": "train+val", "score": "background_highpass"})
    assert both.shape[0] == 8 and both[-3:].eq(1).all()
    # a statistic that reads the trained MAE fits its training scans: calibrating on them would understate FPR
    with pytest.raises(ValueError, match="calibrate it on val"):
        calibration_scans(data, {"calibration-scans": "train+val", "score": "mean_abs_error"})
    with pytest.raises(ValueError, match="unknown calibration-scans"):
        calibration_scans(data, {"calibration-scans": "test"})


def test_a_stopped_run_resumes_from_its_last_round(caches, tmp_path, ray_tmp):
    """Two rounds in one go, and one round then a resumed second: the same records and the same weights."""
    from medfedpure.federated import resume
    from medfedpure.hub import load_weights

    straight = tmp_path / "straight"
    _simulate(caches, straight, **{"num-rounds": 2})
    stopped = tmp_path / "stopped"
    _simulate(caches, stopped, **{"num-rounds": 1, "resume": True})
    assert (stopped / "classifier" / "resume" / "server.pt").is_file()
    assert (stopped / "classifier" / "resume" / "hospital-0.pt").is_file()
    _simulate(caches, stopped, **{"num-rounds": 2, "resume": True})
    rounds = sorted({r["round"] for r in _history(stopped)["records"] if r["phase"] == "train"})
    assert rounds == [1, 2]
    a, _ = load_weights(straight / "classifier")
    b, _ = load_weights(stopped / "classifier")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a if not k.startswith("gates."))
    with pytest.raises(ValueError, match="seed"):
        resume.load_server(resume.resume_dir(stopped, "classifier"),
                           {**run_settings.resolve("classifier", {"model-config": TINY_CLASSIFIER}), "seed": 7})
