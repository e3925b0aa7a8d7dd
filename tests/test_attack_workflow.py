"""The one attack workflow (medfedpure.attack_workflow) behind the app, its batch tab and the CLI: `AttackSpec`
checks and canonical form, the app's request parsing, and `analyze_attacked` on the shipped models (clean pass,
labels, the library's own attack, the whole pipeline on the attacked scans)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medfedpure.app_request import EPS_MAX, AnalyzeRequest, Limits, UserError
from medfedpure.attack_workflow import AttackSpec, analyze_attacked

REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = REPO_ROOT / "pretrained"
EXAMPLES = REPO_ROOT / "assets" / "examples"
needs_models = pytest.mark.skipif(not (PRETRAINED / "classifier" / "model.safetensors").is_file(),
                                  reason="the shipped checkpoints (pretrained/) are not found")


# ------------------------------------------------------------------------------------------------ AttackSpec
@pytest.mark.parametrize("kwargs,message", [
    ({"name": "cw"}, r"Unknown attack 'cw'; choose none, fgsm, pgd or adaptive"),
    ({"name": "pgd", "eps": -0.01}, r"eps must be between 0 and 1"),
    ({"name": "pgd", "eps": 1.5}, r"eps must be between 0 and 1"),
    ({"name": "pgd", "eps": float("nan")}, r"eps must be a finite number"),
    ({"name": "pgd", "eps": "lots"}, r"eps must be a number, got 'lots'"),
    ({"name": "pgd", "steps": 0}, r"steps must be at least 1, got 0"),
    ({"name": "pgd", "steps": 2.5}, r"steps must be a whole number"),
    ({"name": "adaptive", "eot": 0}, r"EOT samples must be at least 1, got 0"),
    ({"name": "pgd", "seed": "x"}, r"seed must be a number"),
])
def test_attack_spec_rejects_bad_values_in_plain_words(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackSpec(**kwargs)


def test_attack_spec_is_canonical_and_frozen():
    spec = AttackSpec(" PGD ", eps="0.03", steps=5.0, seed=3.0, eot=4)
    assert (spec.name, spec.eps, spec.steps, spec.seed, spec.eot) == ("pgd", 0.03, 5, 3, 1)  # eot: adaptive only
    assert isinstance(spec.steps, int) and spec.step == pytest.approx(0.0075) and spec.active
    assert spec.title == "PGD" and spec.counted_model == "classifier"
    assert AttackSpec("fgsm", eps=0.02, steps=9).steps == 1  # one step, whatever was asked
    assert AttackSpec("pgd", eps=0) == AttackSpec("none", eps=0.5, steps=3) == AttackSpec(None)  # eps 0: no attack
    assert not AttackSpec("pgd", eps=0).active and AttackSpec("pgd", eps=0).record() == {"name": "none"}
    adaptive = AttackSpec("adaptive", eps=0.02, steps=2, eot=2)
    assert adaptive.eot == 2 and adaptive.counted_model == "mae" and adaptive.title == "adaptive"
    record = adaptive.record()
    assert record["threat_model"] == "white-box on the whole defence" and record["eot"] == 2
    assert record["step"] == pytest.approx(0.005) and record["steps"] == 2
    assert "paper protocol" in AttackSpec("pgd").record()["threat_model"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.eps = 0.5


def test_app_request_is_checked_once_against_the_hardware():
    cpu = Limits.for_device("cpu")
    req = AnalyzeRequest.parse([0, 3], cpu, "3", "FGSM", 0.02, 15, True, True, 7, 4, 9, 0)
    assert req.hospital == 3 and req.attack == AttackSpec("fgsm", 0.02, 1, 7) and req.seed == 7
    assert req.frame == 3 and req.purify == "always" and req.make_report is False
    assert AnalyzeRequest.parse([0], cpu, None, defence=False, purify_always=True).purify == "never"
    assert AnalyzeRequest.parse([0], cpu, frame=0).frame is None  # 0: the reader's default frame
    for args, message in [((99,), r"Unknown hospital 99; this checkpoint has hospitals \[0, 3\]"),
                          ((0, "cw"), r"Unknown attack 'cw'"),
                          ((0, "pgd", EPS_MAX * 2), rf"eps must be between 0 and {EPS_MAX}"),
                          ((0, "pgd", 0.03, cpu.steps_max + 1), rf"steps must be between 1 and {cpu.steps_max}"),
                          ((0, "adaptive", 0.03, cpu.adaptive_steps_max + 1),
                           rf"steps must be between 1 and {cpu.adaptive_steps_max}"),
                          ((0, "adaptive", 0.03, 1, True, False, 0, 0, cpu.eot_max + 1),
                           rf"EOT samples must be between 1 and {cpu.eot_max}"),
                          ((0, "none", 0.03, 1, True, False, 0, "x"), r"frame must be a whole number")]:
        with pytest.raises(UserError, match=message):
            AnalyzeRequest.parse([0, 3], cpu, *args)
    # the GPU allows more of the same request
    AnalyzeRequest.parse([0], Limits.for_device("cuda:0"), 0, "pgd", 0.03, cpu.steps_max + 1)


# ------------------------------------------------------------------------------------------------ the workflow
@pytest.fixture(scope="module")
def pipe():
    from medfedpure.pipeline import MedFedPure

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return MedFedPure.from_pretrained(PRETRAINED, device="cpu")


@pytest.fixture(scope="module")
def x():
    from medfedpure.io import read_scan

    return torch.stack([torch.from_numpy(read_scan(EXAMPLES / f).image) for f in
                        ("no427.jpg", "y1493.jpg", "Tr-gl_0020.jpg")]).unsqueeze(1)


def _stages():
    calls = []
    return calls, lambda stage, total: calls.append((stage, total))


@needs_models
def test_without_an_attack_the_workflow_is_the_pipeline(pipe, x):
    calls, on_stage = _stages()
    run = analyze_attacked(pipe, x, 0, AttackSpec(), purify="always", seed=5, on_stage=on_stage)
    direct = pipe.analyze(x, hospital=0, purify="always", seed=5)
    assert run.clean is None and run.labels is None and run.timings_ms == {}
    assert calls == [("defence", pipe.ddim_steps)]
    for got, want in zip(run.result, direct):
        assert got.probabilities == want.probabilities and got.final_probabilities == want.final_probabilities
        assert got.t_star == want.t_star > 0
    assert all(np.array_equal(r.input, x[i, 0].numpy()) for i, r in enumerate(run.result))  # the scans as given


@needs_models
def test_pgd_workflow_is_the_library_attack_on_the_clean_labels(pipe, x):
    from medfedpure.attacks import make_attack, perturbation_norms

    spec = AttackSpec("pgd", eps=8 / 255, steps=5, seed=1)
    calls, on_stage = _stages()
    run = analyze_attacked(pipe, x, 0, spec, on_stage=on_stage)
    assert calls == [("clean", 0), ("attack", 5), ("defence", pipe.ddim_steps)]
    assert set(run.timings_ms) == {"classify_clean", "attack"}
    clean = pipe.analyze(x, hospital=0, purify="never")
    assert [r.probabilities for r in run.clean] == [r.probabilities for r in clean]
    assert all(r.t_star == 0 for r in run.clean)  # the clean pass purifies nothing
    assert run.labels == [int(np.argmax(r.probabilities)) for r in clean]
    # the attacked scans are exactly what the library's PGD makes from these labels
    expected = make_attack("pgd", pipe.classifier_for(0), eps=spec.eps, step=spec.step, steps=5, seed=1)(
        x, torch.tensor(run.labels))
    attacked = torch.from_numpy(np.stack([r.input for r in run.result]))[:, None]
    assert torch.equal(attacked, expected.clamp(0, 1))
    linf, _ = perturbation_norms(x, attacked)
    assert (linf <= spec.eps + 1e-6).all() and (linf > spec.eps / 2).all()
    # it pushes away from the label: the classifier's confidence in it drops on every scan
    for label, before, after in zip(run.labels, run.clean, run.result):
        assert after.probabilities[label] < before.probabilities[label] - 0.05
    # seeded: the same spec gives the same scans, another seed another random start
    again = analyze_attacked(pipe, x, 0, spec)
    assert all(np.array_equal(a.input, b.input) for a, b in zip(again.result, run.result))
    other = analyze_attacked(pipe, x, 0, dataclasses.replace(spec, seed=2))
    assert not np.array_equal(other.result[0].input, run.result[0].input)


@needs_models
def test_adaptive_workflow_attacks_through_the_defence(pipe, x):
    spec = AttackSpec("adaptive", eps=0.02, steps=1, eot=1)
    calls, on_stage = _stages()
    run = analyze_attacked(pipe, x[1:2], 0, spec, on_stage=on_stage)
    assert calls[1] == ("attack", 1) and spec.counted_model == "mae"
    delta = np.abs(run.result[0].input - x[1, 0].numpy()).max()
    assert 0 < delta <= 0.02 + 1e-6
    assert run.result[0].score != pytest.approx(run.clean[0].score, abs=1e-9)  # the detector sees another scan


@needs_models
def test_app_and_cli_share_the_workflow(pipe, tmp_path, capsys, monkeypatch):
    """The same scan and settings give the same numbers through the app's callback and `analyze` on the CLI."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app

    from medfedpure.cli import main

    ui = app.DemoApp(pipe, tmp_path / "work")
    try:
        out = ui.analyze(str(EXAMPLES / "y1431.jpg"), 0, "fgsm", 0.03, 1, True, False, 0, 0, 1, False,
                         request=SimpleNamespace(session_hash="cli"))
    finally:
        ui.sessions.close()
    details = out.details
    assert details["attack"] == AttackSpec("fgsm", 0.03).record()
    assert main(["analyze", str(EXAMPLES / "y1431.jpg"), "--model", str(PRETRAINED), "--device", "cpu",
                 "--attack", "fgsm", "--eps", "0.03", "--json"]) == 0
    assert main(["analyze", str(EXAMPLES / "y1431.jpg"), "--model", str(PRETRAINED), "--device", "cpu",
                 "--json"]) == 0
    attacked, plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert attacked["attack"] == "fgsm" and plain["attack"] == "none" and plain["clean_prediction"] is None
    assert attacked["clean_prediction"] == plain["prediction"] == details["clean"]["prediction"]
    for key, cli_key in (("probabilities", "probabilities"), ("final_probabilities", "final_probabilities")):
        assert list(attacked[cli_key].values()) == pytest.approx(details["result"][key], abs=1e-6)
    assert attacked["detector_score"] == pytest.approx(details["result"]["score"], rel=1e-6)
    assert main(["analyze", str(EXAMPLES / "y1431.jpg"), "--attack", "pgd", "--eps", "2"]) == 1
    assert "eps must be between 0 and 1" in capsys.readouterr().err
    assert math.isfinite(details["perturbation"]["linf"]) and details["perturbation"]["linf"] > 0
