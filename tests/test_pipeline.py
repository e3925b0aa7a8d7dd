"""The MedFedPure pipeline and the `analyze` command, on the bundled checkpoints (or, before they exist, on an
untrained tiny checkpoint in the same layout: then only the plumbing is checked, not the predictions)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfedpure.cli import main
from medfedpure.hub import BUNDLED_DIR
from medfedpure.io import read_scan
from medfedpure.pipeline import MedFedPure

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
REAL = (BUNDLED_DIR / "classifier" / "model.safetensors").exists()
# Example scans that are in the committed test split (never seen in training), with their labels.
HELD_OUT = {"y1349.jpg": "tumour", "y1493.jpg": "tumour", "no411.jpg": "no_tumour", "no427.jpg": "no_tumour"}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    if REAL:
        return BUNDLED_DIR
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def pipe(model_dir):
    return MedFedPure.from_pretrained(str(model_dir), device="cpu")


@pytest.fixture(scope="session")
def scans():
    return [read_scan(EXAMPLES / name) for name in sorted(HELD_OUT)]


def test_result_holds_every_stage_consistently(pipe, scans):
    h = pipe.hospitals[0]
    result = pipe.analyze(scans, hospital=h)
    assert len(result) == len(scans) and result.device == "cpu"
    for r in result:
        assert r.input.shape == r.reconstruction.shape == r.error_map.shape == (128, 128)
        assert r.flagged == (r.score > r.threshold)
        assert r.threshold == pipe.threshold(h)
        assert (r.t_star > 0) == r.flagged and (r.purified is None) == (not r.flagged)
        assert abs(sum(r.probabilities) - 1) < 1e-4 and abs(sum(r.final_probabilities) - 1) < 1e-4
        assert r.final_prediction == pipe.class_names[int(np.argmax(r.final_probabilities))]
        assert {"classify", "detect", "total"} <= set(r.timings_ms)
        json.dumps(r.summary())  # JSON-ready


def test_purify_always_and_never(pipe, scans):
    h = pipe.hospitals[-1]
    always = pipe.analyze(scans, hospital=h, purify="always", seed=1)
    assert all(r.purified is not None and pipe.t_min <= r.t_star <= pipe.t_max for r in always)
    again = pipe.analyze(scans, hospital=h, purify="always", seed=1)
    assert all(np.array_equal(a.purified, b.purified) for a, b in zip(always, again))  # seeded
    never = pipe.analyze(scans, hospital=h, purify="never")
    assert all(r.purified is None and r.final_probabilities == r.probabilities for r in never)



def test_a_purifier_swapped_in_brings_its_own_operating_settings(model_dir, tmp_path, scans):
    import shutil

    candidate = tmp_path / "purifier"
    shutil.copytree(model_dir / "purifier", candidate)
    spec = json.loads((candidate / "purification.json").read_text())
    spec["operating"] = {**spec["operating"], "t_min": 10, "t_max": 20, "ddim_steps": 1}
    (candidate / "purification.json").write_text(json.dumps(spec))
    swapped = MedFedPure.from_pretrained(str(model_dir), device="cpu")
    swapped.use_purifier(candidate)
    assert (swapped.t_min, swapped.t_max, swapped.ddim_steps) == (10, 20, 1)
    assert not any(p.requires_grad for p in swapped.purifier.parameters()) and not swapped.purifier.training
    r = swapped.analyze(scans[:1], hospital=swapped.hospitals[0], purify="always")[0]
    assert 10 <= r.t_star <= 20

def test_hospitals_have_their_own_models_and_thresholds(pipe, scans):
    assert len(pipe.hospitals) >= 2
    a, b = pipe.hospitals[:2]
    x = torch.from_numpy(np.stack([s.image for s in scans]))[:, None]
    with torch.no_grad():
        assert not torch.allclose(pipe.classifier_for(a)(x), pipe.classifier_for(b)(x))


def test_bad_requests_are_clear_errors(pipe, scans):
    with pytest.raises(ValueError, match="unknown hospital"):
        pipe.analyze(scans, hospital=999)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe.analyze(torch.full((1, 1, 128, 128), 2.0), hospital=pipe.hospitals[0])
    with pytest.raises(ValueError, match="purify"):
        pipe.analyze(scans, hospital=pipe.hospitals[0], purify="sometimes")


@pytest.mark.skipif(not REAL, reason="needs the trained checkpoints in pretrained/")
def test_trained_models_classify_clear_held_out_examples():
    """Four held-out scans of three sources: every hospital's model gets them right, with the defence on.

    (Not all seven test examples: the shipped classifier calls y1349 "no tumour" at 5 of the 10 hospitals and the
    TCGA tumour example "no tumour" at all of them; see reports/generalisation.md. This pins behaviour.)
    """
    pipe = MedFedPure.from_pretrained(str(BUNDLED_DIR), device="cpu")
    clear = {"y1493.jpg": "tumour", "no427.jpg": "no_tumour", "Tr-gl_0020.jpg": "tumour",
             "TCGA_DU_6404_19850629_21.png": "no_tumour"}
    scans = [read_scan(EXAMPLES / name) for name in clear]
    for h in pipe.hospitals:
        for name, r in zip(clear, pipe.analyze(scans, hospital=h)):
            assert r.prediction == clear[name], (h, name, r.summary())


def test_analyze_cli_json_and_exit_codes(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    files = [str(EXAMPLES / "no411.jpg"), str(bad), str(EXAMPLES / "y1493.jpg")]
    code = main(["analyze", *files, "--model", str(model_dir), "--json", "--device", "cpu"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 2 and [r["ok"] for r in rows] == [True, False, True]
    assert "notes.png" in rows[1]["error"] and "Traceback" not in rows[1]["error"]
    for r in (rows[0], rows[2]):
        for key in ("prediction", "probabilities", "detector_score", "threshold", "flagged", "t_star",
                    "purified_prediction", "final_prediction", "latency_ms"):
            assert key in r
        assert r["flagged"] == (r["detector_score"] > r["threshold"])
    assert main(["analyze", files[0], "--model", str(model_dir), "--json", "--device", "cpu"]) == 0


@pytest.mark.skipif(not REAL, reason="needs the bundled checkpoints")
def test_shipped_thresholds_keep_false_positives_on_clean_test_scans_near_target(pipe, br35h_dir):
    """The detector's quality bar, through the pipeline's own scoring: at most 5% of clean test scans flagged
    (mean over the hospitals' thresholds), and no hospital far off its 5% target."""
    from medfedpure.data import load_split_scans

    cache = load_split_scans(br35h_dir.parent, BUNDLED_DIR / "split.csv", "test")
    x = torch.from_numpy(cache.images.astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        scores = torch.cat([pipe.detect(x[i:i + 100])[2] for i in range(0, len(x), 100)]).numpy()
    fprs = [float((scores > pipe.threshold(h)).mean()) for h in pipe.hospitals]
    assert np.mean(fprs) <= 0.05, fprs
    assert max(fprs) <= 0.07, fprs  # measured: 3.2% on average, 4.5% at worst (own-or-pooled thresholds)
