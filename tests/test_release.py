"""Model card and release: filled from the checkpoint's own configs, no placeholders, manifest verifies."""

import importlib.util
import json
import shutil
from pathlib import Path

from medfedpure.hub import verify_manifest
from medfedpure.release import finish

ROOT = Path(__file__).resolve().parent.parent


def _tiny(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_checkpoint(tmp_path / "ckpt")


def test_model_card_is_filled_from_configs_and_results(tmp_path):
    folder = _tiny(tmp_path)
    shutil.copyfile(ROOT / "pretrained" / "split.csv", folder / "split.csv")
    shutil.copyfile(ROOT / "pretrained" / "split.json", folder / "split.json")
    results = tmp_path / "reports" / "runs" / "paper"
    results.mkdir(parents=True)
    (results / "results.json").write_text(json.dumps({
        "n": 600, "attack": {"name": "pgd", "eps": 0.015, "steps": 7}, "clean_accuracy": 0.9,
        "clean_accuracy_defended": {"mean": 0.89, "std": 0.01}, "robust_accuracy_undefended": 0.1,
        "robust_accuracy_defended": {"mean": 0.5, "std": 0.02}, "detection_auroc": 0.6,
        "false_positive_rate": {"mean": 0.05, "std": 0.0}, "true_positive_rate": {"mean": 0.3, "std": 0.0}}))
    finish(folder, tmp_path / "reports")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0")
    for needed in ("Not a medical device", "Br35H", "split.csv", "Flower", "arXiv:2511.11625",
                   "| paper | pgd, eps 0.015, 7 steps | 600 | 90.00% | 89.00% ± 1.00 |", "| 0.600 |", "Apache-2.0"):
        assert needed in card, needed
    assert "{" not in card.split("```bibtex")[0].split("---", 2)[2]  # no unformatted template fields
    verify_manifest(folder)


def test_release_ships_no_absolute_paths_of_the_training_machine(tmp_path):
    """Records name the data cache by file name only; the bundled pretrained/ obeys the same rule."""
    from medfedpure.release import _copy_records

    run = tmp_path / "run"
    run.mkdir()
    history = {"summary": {"settings": {"data-path": str(tmp_path / "cache" / "br35h-128.npz"), "out-dir": "runs"}},
               "records": [{"round": 1, "hospital": 0, "val-accuracy": 0.5}]}
    (run / "history.json").write_text(json.dumps(history))
    _copy_records(run, tmp_path / "shipped")
    shipped = json.loads((tmp_path / "shipped" / "history.json").read_text())
    assert shipped["summary"]["settings"] == {"data-path": "br35h-128.npz", "out-dir": "runs"}
    assert shipped["records"] == history["records"]
    for f in (ROOT / "pretrained").rglob("*.json"):
        text = f.read_text()
        assert str(ROOT.parent) not in text and '"/' not in text, f
