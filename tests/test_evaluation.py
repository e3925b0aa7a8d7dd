"""Evaluation: AUROC/ROC, subsets and pairs, the evaluate() results, the CLI and the report (tiny checkpoint)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medfedpure import evaluation
from medfedpure.evaluation import run as evaluation_run
from medfedpure.evaluation import (EvalSettings, ScanSet, _rankdata, _stratified_pick, auroc, evaluate, load_scans,
                                   make_pairs, roc_curve)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "assets" / "examples"
REQUIRED_KEYS = ("n", "clean_accuracy", "clean_accuracy_defended", "robust_accuracy_undefended",
                 "robust_accuracy_defended", "detection_auroc", "false_positive_rate", "true_positive_rate",
                 "per_hospital", "attacks", "ablations", "settings", "seeds", "timings_s", "environment", "git",
                 "model", "data", "defence")


def _tiny_checkpoint(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_tiny_ckpt", REPO_ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_checkpoint(out)


def _write_split(path: Path, data_dir: Path, split: str = "test", corrupt: str | None = None) -> Path:
    rows = ["path,sha256,label,split,hospital,group"]
    # the six Br35H examples (no*.jpg, y*.jpg); the other sources' examples have other names
    for i, f in enumerate(sorted(f for f in data_dir.glob("*.jpg") if f.name.startswith(("no", "y")))):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        if f.name == corrupt:
            sha = "0" * 64
        hospital = -1 if split == "test" else i % 2
        rows.append(f"{f.name},{sha},{int(f.name.startswith('y'))},{split},{hospital},{i}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An UNTRAINED tiny checkpoint (2 hospitals) with a split CSV over the six example scans beside it."""
    ckpt = _tiny_checkpoint(tmp_path_factory.mktemp("tiny_eval") / "ckpt")
    _write_split(ckpt / "split.csv", EXAMPLES)
    return ckpt


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ckpt):
    from medfedpure.pipeline import MedFedPure

    return MedFedPure.from_pretrained(str(tiny_ckpt), device="cpu")


@pytest.fixture(scope="session")
def example_scans(tiny_ckpt) -> ScanSet:
    return load_scans(EXAMPLES, "test", tiny_ckpt / "split.csv")


# --------------------------------------------------------------------------------------------- metrics
def test_auroc_matches_a_hand_computed_case():
    # positives 2 and 4 against negatives 1, 2, 3: 2 beats 1, ties 2 (half), loses to 3; 4 beats all three.
    assert auroc([1, 2, 3], [2, 4]) == pytest.approx((1 + 0.5 + 0 + 3) / 6)
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    assert auroc([], [1.0]) is None


def test_auroc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 20, 50).astype(float), rng.integers(5, 25, 40).astype(float)
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(neg) * len(pos))
    assert auroc(neg, pos) == pytest.approx(brute)
    fpr, tpr, _ = roc_curve(neg, pos, max_points=None)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute)  # the area under the curve is the AUROC


def test_rankdata_averages_ties():
    assert _rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_stratified_subset_is_seeded_and_keeps_both_classes():
    labels = np.array([0] * 30 + [1] * 10)
    a, b = _stratified_pick(labels, 8, seed=1), _stratified_pick(labels, 8, seed=1)
    assert a.tolist() == b.tolist() and len(a) == 8
    assert (labels[a] == 0).sum() == 6 and (labels[a] == 1).sum() == 2
    assert _stratified_pick(labels, 100, seed=0).tolist() == list(range(40))


def test_pairs_all_round_robin_and_own_val_scans():
    scans = ScanSet(np.zeros((7, 4, 4), np.uint8), np.zeros(7, np.int64), [f"s{i}" for i in range(7)],
                    np.full(7, -1), {"split": "test"})
    assert all(len(v) == 7 for v in make_pairs(scans, [0, 1, 2], "all").values())
    rr = make_pairs(scans, [0, 1, 2], "round-robin", seed=0)
    assert sorted(np.concatenate(list(rr.values())).tolist()) == list(range(7))
    assert sorted(len(v) for v in rr.values()) == [2, 2, 3]
    val = ScanSet(scans.images, scans.labels, scans.names, np.array([0, 1, 1, 0, 2, 2, 2]), {"split": "val"})
    assert {h: v.tolist() for h, v in make_pairs(val, [0, 1, 2]).items()} == {0: [0, 3], 1: [1, 2], 2: [4, 5, 6]}


# --------------------------------------------------------------------------------------------- data
def test_load_scans_checks_sha256_and_limits(tmp_path, example_scans):
    assert len(example_scans) == 6 and example_scans.info["sha256_checked"]
    assert example_scans.images.dtype == np.uint8
    bad = _write_split(tmp_path / "bad.csv", EXAMPLES, corrupt="no35.jpg")
    from medfedpure.data import DataError

    with pytest.raises(DataError, match="sha256"):
        load_scans(EXAMPLES, "test", bad)
    sub = load_scans(EXAMPLES, "test", _write_split(tmp_path / "ok.csv", EXAMPLES), limit=4, seed=0)
    assert len(sub) == 4 and set(sub.labels.tolist()) == {0, 1}


def test_load_scans_val_and_external_folder(tmp_path):
    val = load_scans(EXAMPLES, "val", _write_split(tmp_path / "val.csv", EXAMPLES, split="val"), hospitals=[1])
    assert set(val.home.tolist()) == {1} and len(val) == 3
    ext = tmp_path / "external"
    for sub, prefix in (("no", "no"), ("yes", "y")):
        (ext / sub).mkdir(parents=True)
        for f in EXAMPLES.glob(f"{prefix}*.jpg"):
            shutil.copy(f, ext / sub / f.name)
    scans = load_scans(ext, "all")
    assert len(scans) == 6 and scans.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert scans.info["split"] == "all"


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_results_have_every_field(tiny_pipe, example_scans):
    settings = EvalSettings(attacks=["pgd", "fgsm"], eps=[0.015], steps=2, repeats=2, ablations=True, progress=False)
    res = evaluate(tiny_pipe, example_scans, settings)
    for key in REQUIRED_KEYS:
        assert key in res, key
    assert res["n"] == 6 and res["n_pairs"] == 12 and res["hospitals"] == [0, 1]
    for key in ("clean_accuracy_defended", "robust_accuracy_defended"):
        assert set(res[key]) == {"mean", "std", "values"} and len(res[key]["values"]) == 2
    assert 0.0 <= res["detection_auroc"] <= 1.0
    assert [a["label"] for a in res["attacks"]] == ["pgd eps=0.015", "fgsm eps=0.015"]
    assert res["attacks"][0]["perturbation_linf_max"] <= 0.015 + 1e-6
    assert set(res["per_hospital"]) == {"0", "1"}
    assert "robust_accuracy_defended" in res["per_hospital"]["0"]
    assert {"purify_always", "fixed_t_star_t_max", "detect_and_reject", "no_defence"} <= set(res["ablations"])
    assert res["seeds"]["purifier"] == [0, 1]
    assert res["environment"]["packages"]["torchattacks"]
    json.dumps(res, allow_nan=False)


def test_the_same_adversarial_scans_feed_both_the_undefended_and_defended_model(tiny_pipe, example_scans,
                                                                                monkeypatch):
    calls, outputs = [], {}
    real = evaluation_run.make_attack

    def counting(name, *args, **kwargs):
        attack = real(name, *args, **kwargs)

        def wrapped(x, y, key=None):
            calls.append(key)
            adv = attack(x, y, key=key)
            outputs[key] = (adv, y)
            return adv
        wrapped.settings = attack.settings
        return wrapped

    monkeypatch.setattr(evaluation_run, "make_attack", counting)
    res = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["pgd"], steps=2, batch_size=4, progress=False),
                   hospitals=[1])
    assert len(calls) == 2  # one call per batch (6 scans, batch 4): never re-attacked for the defended figure
    adv = torch.cat([outputs[k][0] for k in calls])
    y = torch.cat([outputs[k][1] for k in calls])
    with torch.no_grad():
        undefended = (tiny_pipe.classifier_for(1)(adv).argmax(1) == y).float().mean().item()
    assert res["robust_accuracy_undefended"] == pytest.approx(undefended)


def test_defence_passes_unflagged_scans_unchanged(tiny_pipe, example_scans, monkeypatch):
    for h in tiny_pipe.calibration:  # a threshold nobody reaches: nothing is flagged, nothing purified
        monkeypatch.setitem(tiny_pipe.calibration, h, {**tiny_pipe.calibration[h], "threshold": 1e9})
    res = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["fgsm"], progress=False))
    assert res["false_positive_rate"] == 0.0 and res["true_positive_rate"] == 0.0
    assert res["clean_accuracy_defended"]["mean"] == res["clean_accuracy"]
    assert res["robust_accuracy_defended"]["mean"] == res["robust_accuracy_undefended"]
    assert res["purifications"] == 0


def test_defended_prediction_does_not_depend_on_the_batch(tiny_pipe, example_scans):
    base = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["none"], batch_size=6, progress=False),
                    hospitals=[0])
    small = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["none"], batch_size=2, progress=False),
                     hospitals=[0])
    assert base["clean_accuracy_defended"] == small["clean_accuracy_defended"]
    assert base["robust_accuracy_undefended"] is None  # no attack: no robust figures



def test_a_stopped_attack_run_resumes_from_its_stored_batches_with_the_same_figures(tiny_pipe, example_scans,
                                                                                  tmp_path, monkeypatch):
    settings = dict(attacks=["pgd"], steps=2, batch_size=4, progress=False, attack_cache=str(tmp_path / "adv"))
    first = evaluate(tiny_pipe, example_scans, EvalSettings(**settings))
    assert first["attack_cache"] == {"batches_loaded": 0, "batches_made": 4}  # 2 hospitals x 2 batches
    names = sorted(p.name for p in (tmp_path / "adv").iterdir())
    assert len(names) == 4 and all(re.fullmatch(r"[0-9a-f]{32}\.npy", n) for n in names)  # no scan names

    # A run stopped after one batch leaves that batch behind; the rerun makes only the missing ones.
    for extra in names[1:]:
        (tmp_path / "adv" / extra).unlink()
    calls = []
    real = evaluation_run.make_attack

    def counting(name, *args, **kwargs):
        attack = real(name, *args, **kwargs)

        def wrapped(x, y, key=None):
            calls.append(key)
            return attack(x, y, key=key)
        wrapped.settings = attack.settings
        return wrapped

    monkeypatch.setattr(evaluation_run, "make_attack", counting)
    resumed = evaluate(tiny_pipe, example_scans, EvalSettings(**settings))
    assert len(calls) == 3 and resumed["attack_cache"] == {"batches_loaded": 1, "batches_made": 3}
    for key in ("robust_accuracy_undefended", "robust_accuracy_defended", "detection_auroc", "true_positive_rate"):
        assert resumed[key] == first[key], key

    # Other attack settings never read those batches.
    calls.clear()
    other = evaluate(tiny_pipe, example_scans, EvalSettings(**{**settings, "steps": 3}))
    assert len(calls) == 4 and other["attack_cache"]["batches_loaded"] == 0

# --------------------------------------------------------------------------------------------- results.json keys
RESULTS_KEYS = REPO_ROOT / "tests" / "results_keys.json"
KEY_RUNS = {  # run name -> settings; "full" computes every optional figure, "plain" none of them
    "full": dict(attacks=["pgd", "fgsm"], eps=[0.015], steps=2, repeats=2, ablations=True),
    "plain": dict(attacks=["pgd"], steps=2),
}


def _key_paths(value, prefix: str = "") -> set[str]:
    """Every key of a JSON value as a path ("attacks[]/per_hospital/0/n"); list items share one "[]" level."""
    if isinstance(value, dict):
        return set().union(*({prefix + k} | _key_paths(v, prefix + k + "/") for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(_key_paths(v, prefix[:-1] + "[]/") for v in value))
    return set()


@pytest.mark.parametrize("run", sorted(KEY_RUNS))
def test_results_json_keeps_its_keys(tiny_pipe, example_scans, tmp_path, run):
    """results.json's nested key set is stored in tests/results_keys.json: a renamed, lost or new key fails here
    (update that file only on purpose; the report, the model card and other readers use these keys)."""
    res = evaluate(tiny_pipe, example_scans, EvalSettings(**KEY_RUNS[run], progress=False))
    path = evaluation.write_results(res, tmp_path)
    got = _key_paths(json.loads(path.read_text()))
    expected = set(json.loads(RESULTS_KEYS.read_text())[run])
    assert got == expected, f"new keys {sorted(got - expected)[:10]}, missing keys {sorted(expected - got)[:10]}"


def test_key_paths_see_nested_and_listed_keys():
    assert _key_paths({"a": 1, "b": {"c": [{"d": 1}, {"e": 2}]}, "f": []}) == {"a", "b", "b/c", "b/c[]/d",
                                                                              "b/c[]/e", "f"}


def test_attack_names_are_the_attacks_module_s():
    from medfedpure.attacks import ATTACKS
    from medfedpure.evaluation import AttackName

    assert [a.value for a in AttackName] == list(ATTACKS)


# --------------------------------------------------------------------------------------------- CLI + report
def test_evaluate_cli_on_the_tiny_checkpoint(tiny_ckpt, tmp_path, capsys):
    from medfedpure.cli import main

    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(EXAMPLES), "--model", str(tiny_ckpt), "--limit", "4", "--attack", "pgd",
                 "--steps", "2", "--repeats", "2", "--ablations", "--quiet", "--device", "cpu", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    for key in REQUIRED_KEYS:
        assert key in res, key
    assert res["n"] == 4 and res["settings"]["eps"] == [0.015] and res["settings"]["step"] == "eps/5"
    assert res["attacks"][0]["settings"]["step"] == pytest.approx(0.003)
    assert "| No defence |" in (out / "RESULTS.md").read_text()
    assert "robust accuracy" in capsys.readouterr().out


def test_evaluate_cli_reports_bad_input(tiny_ckpt, tmp_path, capsys):
    from medfedpure.cli import main

    bad = _write_split(tmp_path / "bad.csv", EXAMPLES, corrupt="y1349.jpg")
    args = ["evaluate", "--data", str(EXAMPLES), "--model", str(tiny_ckpt), "--quiet", "--out", str(tmp_path / "o")]
    assert main(args + ["--split-csv", str(bad)]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(args + ["--hospital", "7"]) == 2
    assert main(args + ["--attack", "deepfool"]) == 2


def test_report_from_results(tiny_pipe, example_scans, tmp_path):
    from medfedpure.report import build_report, results_markdown

    paper = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["pgd"], steps=2, repeats=2, progress=False))
    sweep = evaluate(tiny_pipe, example_scans, EvalSettings(attacks=["pgd"], eps=[0.004, 0.015], steps=2,
                                                             pairs="round-robin", progress=False))
    for name, res in (("paper", paper), ("sweep", sweep), ("adaptive", paper), ("adaptive-known-seed-16", paper),
                      ("fedavg", paper)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "results.json").write_text(json.dumps(res))
    from PIL import Image

    plot = tmp_path / "round.png"
    Image.new("L", (8, 8)).save(plot)
    path = build_report(tmp_path / "runs", tmp_path / "report", wall_time=12.0, round_plot=plot)
    text = path.read_text()
    assert "97.67%" in text and "87.33%" in text and "49.50%" in text  # the paper's Table 2 beside ours
    for png in ("roc.png", "robust_vs_eps.png", "per_hospital.png", "accuracy_per_round.png"):
        assert (tmp_path / "report" / png).is_file(), png
    assert "Wall time of the last regeneration" in text
    assert "| Hospital |" in results_markdown(paper)
    # A run folder the report does not know by name (a documented subset) is in the tables too; the README's
    # table has the headline runs, not the FedAvg ablation.
    assert "| adaptive-known-seed-16 |" in text
    headline = (tmp_path / "report" / "HEADLINE.md").read_text()
    runs_in_headline = [line.split("|")[1].strip() for line in headline.splitlines()[2:] if line.startswith("| ")]
    assert runs_in_headline == ["paper", "adaptive", "adaptive-known-seed-16"]


@pytest.mark.slow
def test_make_report_script_end_to_end(tiny_ckpt, tmp_path):
    env = {**os.environ, "MODEL": str(tiny_ckpt), "DATA": str(EXAMPLES), "LIMIT": "4", "SWEEP_LIMIT": "4",
           "ADAPTIVE_LIMIT": "2", "REPEATS": "2", "QUICK": "1", "DEVICE": "cpu"}
    out = tmp_path / "reports"
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make_report.sh"), str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "REPORT.md").is_file() and (out / "roc.png").is_file()
    assert (out / "runs" / "adaptive" / "results.json").is_file()



@pytest.mark.slow
def test_make_report_runs_a_strong_run_only_when_named_and_resumes_it(tiny_ckpt, tmp_path):
    out, cache = tmp_path / "reports", tmp_path / "attacks"
    kept = out / "runs" / "paper"
    kept.mkdir(parents=True)
    (kept / "results.json").write_text("{}")  # a run not named in ONLY keeps its folder
    env = {**os.environ, "MODEL": str(tiny_ckpt), "DATA": str(EXAMPLES), "STRONG_LIMIT": "2", "QUICK": "1",
           "DEVICE": "cpu", "ONLY": "adaptive-known-seed", "ATTACK_CACHE": str(cache)}
    for attempt in range(2):
        proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "make_report.sh"), str(out)], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((out / "runs" / "adaptive-known-seed" / "results.json").read_text())
        made = res["attack_cache"]["batches_made"]
        assert (made > 0) if attempt == 0 else (made == 0 and res["attack_cache"]["batches_loaded"] > 0)
    assert res["settings"]["known_seed"] and res["settings"]["loss"] == "margin" and res["settings"]["restarts"] == 2
    assert (kept / "results.json").read_text() == "{}"
    assert not (out / "runs" / "adaptive-strong").exists()


def test_type_predictions_of_a_classifier_with_a_type_head():
    """The shipped classifier has a tumour-type head: its per-scan types come back as integers (the path that tiny
    test models without a type head never take)."""
    from medfedpure.evaluation.defence import _type_predictions
    from medfedpure.hub import BUNDLED_DIR
    from medfedpure.pipeline import MedFedPure

    pipe = MedFedPure.from_pretrained(str(BUNDLED_DIR), device="cpu")
    if not pipe.tumour_types:
        pytest.skip("the bundled classifier has no tumour-type head")
    types = _type_predictions(pipe.classifier_for(0), torch.rand(5, 1, 128, 128), batch_size=2)
    assert types.shape == (5,) and types.dtype.kind == "i"
    assert set(types.tolist()) <= set(range(len(pipe.tumour_types)))
