"""The model card (`README.md` of a checkpoint folder), written from the checkpoint's own configs and the
evaluation results in `reports/`: no number in it is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from medfedpure import __version__

PAPER = "Karami et al., MedFedPure, arXiv 2511.11625 (2025)"

FIELDS = [
    ("clean_accuracy", "clean accuracy, no defence"),
    ("clean_accuracy_defended", "clean accuracy, defence on"),
    ("robust_accuracy_undefended", "robust accuracy, no defence"),
    ("robust_accuracy_defended", "robust accuracy, defence on"),
    ("detection_auroc", "detection AUROC"),
    ("false_positive_rate", "false-positive rate (clean flagged)"),
    ("true_positive_rate", "true-positive rate (attacked flagged)"),
]


def _architecture(clf: dict) -> str:
    if clf.get("expert_type", "resnet") == "head":
        return (f"one shared ResNet-18 trunk (width {clf['width']}, {clf.get('norm', 'batch')} norm) with "
                f"{clf['num_experts']} expert heads")
    return f"mixture of {clf['num_experts']} ResNet-18 experts, width {clf['width']}"


def _fmt(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        std = value.get("std")
        return f"{100 * value['mean']:.2f}%" + (f" ± {100 * std:.2f}" if std else "")
    if isinstance(value, (int, float)):
        return f"{100 * value:.2f}%"
    return "n/a"


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _results_table(results_dir: Path | None) -> str:
    if results_dir is None or not results_dir.is_dir():
        return "_No evaluation results yet: run `bash scripts/make_report.sh`._\n"
    runs = sorted(results_dir.glob("**/results.json"))
    if not runs:
        return "_No evaluation results yet: run `bash scripts/make_report.sh`._\n"
    rows = []
    for path in runs:
        res = json.loads(path.read_text())
        attack = res.get("attack", {})
        label = path.parent.name
        desc = attack.get("name", "none") if isinstance(attack, dict) else str(attack)
        if isinstance(attack, dict) and attack.get("eps") is not None:
            desc += f", eps {attack['eps']:.4g}, {attack.get('steps', '?')} steps"
        rows.append((label, desc, res.get("n"), [_num(res.get(k)) if k == "detection_auroc" else _fmt(res.get(k))
                                                 for k, _ in FIELDS]))
    head = "| run | attack | n | " + " | ".join(name for _, name in FIELDS) + " |\n"
    head += "|---" * (3 + len(FIELDS)) + "|\n"
    return head + "".join(f"| {r[0]} | {r[1]} | {r[2]} | " + " | ".join(r[3]) + " |\n" for r in rows)


def _calibration_scans_phrase(det: dict) -> str:
    if det.get("calibration_scans") == "train+val":
        return ("each hospital's own clean scans, training and validation alike (the score does not read the "
                "trained MAE)")
    return "each hospital's own clean validation scans"


def _recalibration_note(training: dict, score: str) -> str:
    if not training.get("recalibrated_from"):
        return ""
    return ("the detector's thresholds were then recomputed by every hospital for the statistic chosen on validation "
            "scans (`python -m medfedpure train mae --data ../shared/data/br35h --split pretrained/split.csv "
            f"--rounds 0 --set init-from=runs/mae --set score={score} --out runs/calibrated`); ")


def write_model_card(folder: Path, results_dir: Path | None = None) -> Path:
    folder = Path(folder)
    clf = json.loads((folder / "classifier" / "config.json").read_text())
    det = json.loads((folder / "detector" / "config.json").read_text())
    pur = json.loads((folder / "purifier" / "purification.json").read_text())
    split = json.loads((folder / "split.json").read_text()) if (folder / "split.json").exists() else {}
    from medfedpure.data import split_sha256

    split_hash = split_sha256(folder / "split.csv")
    t_clf, t_det, t_pur = clf.get("training", {}), det.get("training", {}), pur.get("training", {})
    counts = split.get("counts", {}).get("split", {})
    thresholds = ", ".join(f"{h}: {c['threshold']:.4f}" for h, c in det.get("calibration", {}).items())
    text = f"""---
license: apache-2.0
library_name: medfedpure
pipeline_tag: image-classification
tags: [medical-imaging, mri, brain-tumor, federated-learning, flower, adversarial-robustness, diffusion, masked-autoencoder]
datasets: [br35h]
---

# MedFedPure checkpoints (Br35H, 10 simulated hospitals)

Personalised federated brain-tumour MRI classifier ({_architecture(clf)}, one gate per hospital), MAE
adversarial-scan detector and DDPM purifier, trained with Flower on the Br35H data set. Reimplementation of {PAPER}; code: medfedpure {__version__}.

## Intended use and limits
- **Research and teaching only. Not a medical device**; not validated for diagnosis or any clinical decision.
- Binary task: tumour / no tumour on single axial MRI slices (128 x 128, grayscale). Br35H mixes sequences and
  sources; performance on other scanners, sequences or populations is unknown.
- The defence is evaluated against the attacks in the table below only; adaptive attackers may do better.
- Br35H's 3000 files hold only a few hundred distinct slices (near-duplicate groups); the test split is
  group-disjoint from training, but small in independent slices: read the spread, not only the mean.

## Data
- Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), 1500 tumour + 1500 no-tumour slices; licence not
  stated by its authors (research/educational use).
- Split `split.csv` (sha256 `{split_hash}`): group-aware (exact and near-duplicate slices never cross splits),
  class-stratified, seed {split.get('seed', 'n/a')}: {', '.join(f'{k} {sum(v.values())}' for k, v in counts.items()) or 'see split.json'} scans.
- {clf.get('training', {}).get('num-hospitals', len(clf.get('hospitals', [])))} hospitals: train and validation scans
  partitioned with label skew Dirichlet(alpha = {split.get('alpha', 'n/a')}); each hospital keeps its own validation
  scans (personalised evaluation, detector calibration). Test scans belong to no hospital.

## Training (federated, {t_clf.get('engine', 'flower').replace('flower-', 'Flower ')} engine)
| model | files | rounds | local epochs | lr | wall time |
|---|---|---|---|---|---|
| classifier ({clf.get('mode')}) | `classifier/` | {t_clf.get('num-rounds')} | {t_clf.get('local-epochs')} | {t_clf.get('lr')} | {t_clf.get('train_seconds')} s |
| MAE detector | `detector/` | {t_det.get('num-rounds')} | {t_det.get('local-epochs')} | {t_det.get('lr')} | {t_det.get('train_seconds')} s |
| DDPM purifier | `purifier/` | {t_pur.get('num-rounds')} | {t_pur.get('local-epochs')} | {t_pur.get('lr')} | {t_pur.get('train_seconds')} s |

Commands: `python -m medfedpure train all --data ../shared/data/br35h --split pretrained/split.csv --out runs`;
{_recalibration_note(t_det, det.get('score'))}`python -m medfedpure release --runs runs{' --detector runs/calibrated/mae' if t_det.get('recalibrated_from') else ''} --out pretrained`. Seed {t_clf.get('seed')}. FedAvg over the hospitals
weighted by scan counts; non-finite or >10x-scaled updates rejected. Classifier loss: class weighting
`{t_clf.get('class-balance', 'none')}` (balanced: each hospital weights both classes equally). The classifier's gates never left the
hospitals during training; each hospital published its gate once, at release, so the demo can offer its model.

- Detector: ViT MAE, patch {det['patch_size']}, mask ratio {det['mask_ratio']}; score = `{det.get('score')}`
  (see medfedpure/detector.py) over {4 * det['score_repeats']} complementary masks (every patch hidden equally often);
  per-hospital thresholds at {100 * det['target_fpr']:.0f}% false positives on {_calibration_scans_phrase(det)}
  ({thresholds}).
- Purifier: DDPM, linear betas 1e-4 to 2e-2, T = 1000, trained on 64-px crops at t < {pur.get('train_max_timestep')};
  purification diffuses to t* in [{pur['t_min']}, {pur['t_max']}] (monotone in the anomaly score) and runs
  {pur['ddim_steps']} DDIM steps.
- Weights are float16 safetensors (loaded as float32); every figure below was measured on them.

## Evaluation (leak-free test split; regenerate with `bash scripts/make_report.sh`)
{_results_table(results_dir)}
Paper (Table 2, leaky split, non-adaptive PGD eps 0.015): clean 97.67%, robust 49.50% -> 87.33% with the defence.

## Licence and citation
Code and weights: Apache-2.0. Data: Br35H, licence not stated by its authors.

```bibtex
@article{{karami2025medfedpure,
  title   = {{MedFedPure: A Medical Federated Framework with MAE-based Detection and Diffusion Purification
             for Inference-Time Attacks}},
  author  = {{Karami, Mohammad and Nemati, Mohammad Reza and Kazemi, Aidin and Mikaeili Barzili, Ali and
             Azadegan, Hamid and Moshiri, Behzad}},
  journal = {{arXiv preprint arXiv:2511.11625}},
  year    = {{2025}}
}}
```
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
