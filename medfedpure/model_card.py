"""The model card (`README.md` of a checkpoint folder), written from the checkpoint's own configs and the
evaluation results in `reports/`: no number in it is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from medfedpure import __version__
from medfedpure.evaluation.metrics import ATTACK, CLEAN

PAPER = "Karami et al., MedFedPure, arXiv 2511.11625 (2025)"

FIELDS = [  # results.json's headline figures (the result records' field names) and their column names
    (CLEAN.clean_accuracy, "clean accuracy, no defence"),
    (CLEAN.clean_accuracy_defended, "clean accuracy, defence on"),
    (ATTACK.robust_accuracy_undefended, "robust accuracy, no defence"),
    (ATTACK.robust_accuracy_defended, "robust accuracy, defence on"),
    (ATTACK.detection_auroc, "detection AUROC"),
    (CLEAN.false_positive_rate, "false-positive rate (clean flagged)"),
    (ATTACK.true_positive_rate, "true-positive rate (attacked flagged)"),
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


def _attack_text(attack) -> str:
    """A run's attack from the one-attack results of earlier releases (no `attacks` list)."""
    if not isinstance(attack, dict):
        return str(attack)
    desc = attack.get("name", "none")
    if attack.get("eps") is not None:
        desc += f", eps {attack['eps']:.4g}, {attack.get('steps', '?')} steps"
    return desc


def _results_table(results_dir: Path | None) -> str:
    if results_dir is None or not results_dir.is_dir():
        return "_No evaluation results yet: run `bash scripts/make_report.sh`._\n"
    # This model set's own runs only (reports/runs/<name>/), never an older model set's (reports/br35h/...).
    runs = sorted(results_dir.glob("runs/*/results.json")) or sorted(results_dir.glob("*/results.json"))
    if not runs:
        return "_No evaluation results yet: run `bash scripts/make_report.sh`._\n"
    rows = []
    attack_keys = {ATTACK.robust_accuracy_undefended, ATTACK.robust_accuracy_defended, ATTACK.detection_auroc,
                   ATTACK.true_positive_rate}  # per attack; the rest (clean figures, false positives) per run
    for path in runs:
        res = json.loads(path.read_text())
        # every attack of a run (a run of FGSM, PGD-L2 and CW has three rows); clean figures are the run's
        for attack in res.get("attacks") or [None]:
            desc = attack["label"] if attack else _attack_text(res.get("attack", {}))
            values = [(attack if attack and k in attack_keys else res).get(k) for k, _ in FIELDS]
            rows.append((path.parent.name, desc, res.get("n"),
                         [_num(v) if k == ATTACK.detection_auroc else _fmt(v) for (k, _), v in zip(FIELDS, values)]))
    head = "| run | attack | n | " + " | ".join(name for _, name in FIELDS) + " |\n"
    head += "|---" * (3 + len(FIELDS)) + "|\n"
    return head + "".join(f"| {r[0]} | {r[1]} | {r[2]} | " + " | ".join(r[3]) + " |\n" for r in rows)


def _calibration_scans_phrase(det: dict) -> str:
    if det.get("calibration_scans") == "train+val":
        return ("each hospital's own clean scans, training and validation alike (the score does not read the "
                "trained MAE)")
    return "each hospital's own clean validation scans"


def _purifier_init_phrase(t_pur: dict) -> str:
    start = t_pur.get("warm_start")
    if not start:
        return ""
    return (f", fine-tuned from a DDPM trained on {start.get('crop', 64)}-px crops at t < {start.get('max-timestep')} "
            f"({start.get('num-rounds')} rounds x {start.get('local-epochs')} local epochs, {start.get('train_seconds')} s); "
            f"total compute {t_pur.get('total_train_seconds')} s")


def _rule_phrase(det: dict) -> str:
    if det.get("threshold_rule") != "own-or-pooled":
        return ""
    pooled = next((c.get("pooled-threshold") for c in det.get("calibration", {}).values()), None)
    return (", each at least the threshold of all hospitals' clean validation scans pooled from their published "
            f"quantile grids ({pooled:.4f}; `threshold-rule=own-or-pooled`)" if pooled is not None else "")


def _mae_phrase(det: dict) -> str:
    if det.get("arch") == "conv":
        return (f"convolutional MAE (a U-Net of width {det.get('width')}, {det.get('levels')} levels, inpainting hidden "
                f"{det['patch_size']}-px patches; trained on 64-px crops at mask ratios {det.get('train_mask_ratios')})")
    return f"ViT MAE, patch {det['patch_size']}, mask ratio {det['mask_ratio']}"


def _norms_phrase(det: dict) -> str:
    norms = det.get("score_norms") or {}
    return f" (each part divided by its clean median: {', '.join(f'{k} {v:.4g}' for k, v in norms.items())})" if norms else ""


def _recalibration_note(training: dict, score: str) -> str:
    if not training.get("recalibrated_from"):
        return ""
    return ("the detector's thresholds were then recomputed by every hospital for the statistic chosen on validation "
            "scans (`python -m medfedpure train mae --data ../shared/data --split pretrained/split.csv "
            f"--rounds 0 --set init-from=runs/mae --set score={score} ... --out runs/calibrated`, see the README); ")


def _init_note(path) -> str:
    if str(path).rstrip("/").endswith("br35h-only/classifier"):
        return (" (the Br35H-only classifier, shipped in `pretrained/` up to commit 417b594; its training scans are "
                "all training or validation scans here)")
    return ""


def _fine_tune_note(training: dict) -> str:
    start = training.get("warm_start")
    if not start:
        return ""
    gates = ", each hospital from its own gate" if training.get("init-gates") else ""
    return (f" (a fine-tune{gates}; the shipped one read purified copies of its training scans too, see the "
            f"README's Train section; the run it continued: {start.get('num-rounds')} "
            f"rounds x {start.get('local-epochs')} local epochs, {start.get('train_seconds')} s; total compute "
            f"{training.get('total_train_seconds')} s)")


def _portable(path) -> str:
    """A run folder as the card shows it: relative paths as they are, absolute ones by their last three parts."""
    if not path:
        return ""
    p = Path(str(path))
    return p.as_posix() if not p.is_absolute() else "/".join(p.parts[-3:])


def _br35h_data_section(split: dict, split_hash: str, clf: dict, counts: dict) -> str:
    return f"""## Data
- Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), 1500 tumour + 1500 no-tumour slices; licence not
  stated by its authors (research/educational use).
- Split `split.csv` (sha256 `{split_hash}`): group-aware (exact and near-duplicate slices never cross splits),
  class-stratified, seed {split.get('seed', 'n/a')}: {', '.join(f'{k} {sum(v.values())}' for k, v in counts.items()) or 'see split.json'} scans.
- {clf.get('training', {}).get('num-hospitals', len(clf.get('hospitals', [])))} hospitals: train and validation scans
  partitioned with label skew Dirichlet(alpha = {split.get('alpha', 'n/a')}); each hospital keeps its own validation
  scans (personalised evaluation, detector calibration). Test scans belong to no hospital.
"""


def _data_section(split: dict, split_hash: str, clf: dict) -> str:
    sc = split.get("source_counts", {}).get("source", {})
    rows = []
    for src, splits in sc.items():
        cells = [f"{splits.get(k, {}).get('no_tumour', 0)} / {splits.get(k, {}).get('tumour', 0)}"
                 for k in ("train", "val", "test")]
        rows.append(f"| {src} | " + " | ".join(cells) + " |")
    sites = ", ".join(f"{k} = hospital {v}" for k, v in split.get("sites", {}).items())
    kept = ", ".join(f"{k} keeps `{v['csv']}`" for k, v in split.get("kept_splits", {}).items())
    return f"""## Data
Three sources, declared in `sources.toml` (see `../shared/data/*/SOURCE.md` of the repository for provenance):
- **br35h**: Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), tumour / no tumour, no type.
- **nickparvar_tumour**: tumour slices with their type from the Kaggle "Brain Tumor MRI Dataset" (Masoud
  Nickparvar; figshare, SARTAJ), copies of Br35H removed, no tumour-free slices.
- **tcga_lgg_flair**: FLAIR slices of 79 lower-grade-glioma patients (TCGA-LGG via Buda et al. 2019) from two
  real institutions, DU and HT, both classes.

Split `split.csv` (sha256 `{split_hash}`, seed {split.get('seed', 'n/a')}): exact and near copies found across all
sources, the sources' duplicate tables and patients are groups that never cross splits; test / val / train by
whole groups, stratified by source and class{'; ' + kept + ' (its test scans stay test: the Br35H-only models never saw them)' if kept else ''}.
Scans (no tumour / tumour):

| source | train | val | test |
|---|---|---|---|
{chr(10).join(rows)}

{split.get('hospitals')} hospitals: {split.get('partition_hospitals')} simulated ones share Br35H and the Nickparvar
scans with label skew Dirichlet(alpha = {split.get('alpha')}) over (source, class); the TCGA sites are hospitals of
their own ({sites}). Each hospital keeps its own validation scans. Test scans belong to no hospital.
"""


def _commands(multi: bool, t_clf: dict, t_det: dict, det: dict) -> str:
    if not multi:
        return ("Commands: `python -m medfedpure train all --data ../shared/data/br35h --split pretrained/split.csv "
                f"--out runs`; {_recalibration_note(t_det, det.get('score'))}`python -m medfedpure release --runs "
                f"runs --out pretrained`.")
    return ("Commands: see the README, \"Train\" (`data split --sources sources.toml --keep-split "
            "br35h=splits/br35h.csv`, `train classifier --sources sources.toml`, the detector's recalibration for "
            "these hospitals, `scripts/fit_ood.py`, `release`).")


def _ood_line(clf: dict) -> str:
    ood = clf.get("ood")
    if not ood:
        return ""
    from medfedpure.ood import COLOUR_MAX, describe_levels

    levels = ", ".join(f"{k} {v['threshold']:.1f}" for k, v in ood.get("levels", {}).items())
    return (f"- Out-of-distribution check: Mahalanobis distances of {len(ood.get('levels', {}))} feature levels "
            f"({describe_levels(ood.get('levels', {}))}; shrunk shared covariances fitted on "
            f"{ood.get('fitted_on')}); thresholds ({levels}) = {ood['margin']} x the {100 * ood['quantile']:.1f}th "
            f"percentile on {ood.get('calibrated_on')}; flat frames, and files with more than "
            f"{100 * COLOUR_MAX:.0f}% of their pixels in colour, are always out of distribution "
            "(`medfedpure/ood.py`, `reports/ood.md`).")


def _generalisation_section(results_dir: Path | None) -> str:
    path = (results_dir / "generalisation.json") if results_dir else None
    if path is None or not path.is_file():
        return ""
    from medfedpure.metrics import format_ci

    g = json.loads(path.read_text())
    lines = ["## Generalisation (test split, clean, undefended; `reports/generalisation.md`)", "",
             "| scans | n | balanced accuracy [95% CI] | sensitivity | specificity |", "|---|---|---|---|---|",
             f"| all test scans | {g['overall']['n']} | {format_ci(g['overall'], 'balanced_accuracy')} | "
             f"{format_ci(g['overall'], 'sensitivity')} | {format_ci(g['overall'], 'specificity')} |"]
    for name, rec in {**g.get("per_dataset", {}), **{k: v for k, v in g.get("per_source", {}).items() if ":" in k},
                      **{f"held-out site {k} (leave-one-site-out run)": v
                         for k, v in g.get("leave_one_site_out", {}).items()}}.items():
        lines.append(f"| {name} | {rec['n']} | {format_ci(rec, 'balanced_accuracy')} | "
                     f"{format_ci(rec, 'sensitivity')} | {format_ci(rec, 'specificity')} |")
    if g.get("tumour_type"):
        t = g["tumour_type"]
        lines += ["", f"Tumour type accuracy on the {t['n_scans']} test scans whose source names it: "
                      f"{100 * t['accuracy']:.1f}% [{100 * t['ci'][0]:.1f}, {100 * t['ci'][1]:.1f}]."]
    lines.append("n counts (hospital model, scan) pairs: every hospital's model on every test scan; intervals "
                 "bootstrap whole duplicate groups / patients.")
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, results_dir: Path | None = None) -> Path:
    folder = Path(folder)
    clf, det, pur = (_flat_config(folder / kind, kind) for kind in ("classifier", "detector", "purifier"))
    split = json.loads((folder / "split.json").read_text()) if (folder / "split.json").exists() else {}
    from medfedpure.data import split_sha256

    split_hash = split_sha256(folder / "split.csv")
    t_clf, t_det, t_pur = clf.get("training", {}), det.get("training", {}), pur.get("training", {})
    counts = split.get("counts", {}).get("split", {})
    thresholds = ", ".join(f"{h}: {c['threshold']:.4f}" for h, c in det.get("calibration", {}).items())
    multi = bool(split.get("sources"))
    data_text = _data_section(split, split_hash, clf) if multi else _br35h_data_section(split, split_hash, clf, counts)
    title = ("Br35H + Nickparvar + TCGA-LGG FLAIR; 8 simulated hospitals and 2 real TCGA sites" if multi
             else "Br35H, 10 simulated hospitals")
    br35h_note = ("" if not (multi and t_det.get("recalibrated_from")) else
                  "\n- The detector's and the purifier's weights are the Br35H-only models' (trained on Br35H's "
                  "training scans only,\n  never on the other two sources); each new hospital recalibrated the "
                  "detector's threshold on its own clean scans.")
    type_note = ("" if not clf.get("num_types") else
                 " The tumour type (glioma, meningioma, pituitary) is shown beside it, learnt only from the Nickparvar\n"
                 "  scans (mostly T1 contrast-enhanced): read it only when the decision is tumour, and not for other "
                 "sequences.")
    text = f"""---
license: apache-2.0
library_name: medfedpure
pipeline_tag: image-classification
tags: [medical-imaging, mri, brain-tumor, federated-learning, flower, adversarial-robustness, diffusion, masked-autoencoder]
datasets: [{'br35h, nickparvar-brain-tumor-mri, tcga-lgg' if multi else 'br35h'}]
---

# MedFedPure checkpoints ({title})

Personalised federated brain-tumour MRI classifier ({_architecture(clf)}, one gate per hospital{
', a tumour-type head and an out-of-distribution check' if clf.get('num_types') else ''}), MAE
adversarial-scan detector and DDPM purifier, trained with Flower. Reimplementation of {PAPER}; code: medfedpure {__version__}.

## Intended use and limits
- **Research and teaching only. Not a medical device**; not validated for diagnosis or any clinical decision.
- The decision is tumour / no tumour on single MRI slices (128 x 128, grayscale).{type_note}
- Tumour-free training scans come from Br35H and the TCGA-LGG FLAIR volumes only (almost all axial); the tumour
  scans of the tumour-only source are mostly sagittal or coronal. See `reports/generalisation.md` for the checks
  that the classifier did not learn "this source's look" or "not axial" as "tumour", and their limits.
- The defence is evaluated against the attacks in the reports only; adaptive attackers may do better.

{data_text}
## Training (federated, {t_clf.get('engine', 'flower').replace('flower-', 'Flower ')} engine)
| model | files | rounds | local epochs | lr | wall time |
|---|---|---|---|---|---|
| classifier ({clf.get('mode')}) | `classifier/` | {t_clf.get('num-rounds')} | {t_clf.get('local-epochs')} | {t_clf.get('lr')} | {t_clf.get('train_seconds')} s |
| MAE detector | `detector/` | {t_det.get('num-rounds')} | {t_det.get('local-epochs')} | {t_det.get('lr')} | {t_det.get('train_seconds')} s |
| DDPM purifier | `purifier/` | {t_pur.get('num-rounds')} | {t_pur.get('local-epochs')} | {t_pur.get('lr')} | {t_pur.get('train_seconds')} s |

{_commands(multi, t_clf, t_det, det)} Seed {t_clf.get('seed')}. FedAvg over the hospitals weighted by scan counts;
non-finite or >10x-scaled updates rejected. Classifier: class balance `{t_clf.get('class-balance', 'none')}`{
' (each hospital draws its scans so that both classes, and every source within a class, count equally)' if t_clf.get('class-balance') == 'sampled' else ''},
augmentation `{t_clf.get('augmentation', 'mild')}`, input normalisation `{clf.get('input_norm', 'dataset')}`{
f", warm start from `{_portable(t_clf.get('init-from'))}`{_init_note(t_clf.get('init-from'))}{_fine_tune_note(t_clf)}" if t_clf.get('init-from') else ''}. The classifier's gates never left the
hospitals during training; each hospital published its gate once, at release, so the demo can offer its model.
{_ood_line(clf)}
- Detector: {_mae_phrase(det)}; score = `{det.get('score')}`{_norms_phrase(det)}
  (see medfedpure/detector.py) over complementary masks at ratio {det.get('score_mask_ratio', det.get('mask_ratio'))}, {det['score_repeats']} set(s) (every patch hidden equally often);
  per-hospital thresholds at {100 * det['target_fpr']:.0f}% false positives on {_calibration_scans_phrase(det)}{_rule_phrase(det)}
  ({thresholds}).
- Purifier: DDPM, linear betas 1e-4 to 2e-2, T = 1000, trained on {t_pur.get('crop', 64)}-px crops at t < {t_pur.get('max-timestep')}{_purifier_init_phrase(t_pur)};
  purification diffuses to t* in [{pur['t_min']}, {pur['t_max']}] (monotone in the anomaly score) and runs
  {pur['ddim_steps']} DDIM steps.
- Weights are float16 safetensors (loaded as float32); every figure below was measured on them.{br35h_note}

{_generalisation_section(results_dir)}
## Evaluation of the defence (leak-free test split; regenerate with `bash scripts/make_report.sh`)
{_results_table(results_dir)}
Paper (Table 2, Br35H, leaky split, non-adaptive PGD eps 0.015): clean 97.67%, robust 49.50% -> 87.33% with the defence.

## Licence and citation
Code and weights: Apache-2.0. Data: Br35H and the Nickparvar set, licences not stated by their authors (the
Nickparvar set combines figshare, SARTAJ and Br35H images); TCGA-LGG under The Cancer Imaging Archive's terms
(cite Buda et al. 2019, Mazurowski et al. 2017 and TCIA).

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


# ------------------------------------------------------------------------------------------------ reading a card
def front_matter(text: str) -> tuple[dict, str]:
    """A model card's YAML front matter and its body -> (metadata dict, body); ({}, text) when it has none."""
    if not text.startswith("---"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    try:
        import yaml

        meta = yaml.safe_load(text[3:end]) or {}
    except Exception:  # noqa: BLE001 - a broken card must not stop its reader
        meta = {}
    return (meta if isinstance(meta, dict) else {}), text[end + 4:].lstrip("\n")


def _flat_config(folder: Path, kind: str, tolerant: bool = False) -> dict:
    """A model's config (sectioned or flat, see checkpoint_format) as one dict of the keys the card names;
    `tolerant`: a missing or broken file reads as empty."""
    from medfedpure.checkpoint_format import read_config

    try:
        return read_config(folder, kind).flat()
    except Exception:  # noqa: BLE001
        if tolerant:
            return {}
        raise


def _words(name) -> str:
    return str(name).replace("_", " ")


def card_summary(folder, description: str, class_names, hospitals, tumour_types=None) -> tuple[str, str]:
    """(short markdown summary, card body) of a checkpoint folder, from its configs and its card (README.md), for
    the demo app's page. Parts that are absent are left out (an empty folder still gives a summary)."""
    root = Path(folder)
    clf, det, pur = (_flat_config(root / kind, kind, tolerant=True) for kind in ("classifier", "detector", "purifier"))
    card = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").is_file() else ""
    meta, body = front_matter(card)
    lines = [f"**Model:** {description or 'unknown source'}"]
    training = clf.get("training") or {}
    if "note" in training:
        lines.append(f"**Training:** {training['note']}")
    clf_bits = []
    if clf.get("mode"):
        experts = f", {clf['num_experts']} experts" if clf.get("num_experts") else ""
        clf_bits.append(f"{clf['mode']} classifier{experts}")
    for key, label in (("num-hospitals", "hospitals"), ("num-rounds", "federated rounds"),
                       ("local-epochs", "local epochs/round")):
        if training.get(key) is not None:
            clf_bits.append(f"{training[key]} {label}")
    if training.get("engine"):
        clf_bits.append(f"trained with Flower ({training['engine']})")
    if clf_bits:
        lines.append("**Classifier:** " + ", ".join(clf_bits))
    types = tumour_types or clf.get("tumour_types") or []
    lines.append("**Tumour type:** " + (", ".join(map(_words, types)) if types else "not estimated by this model"))
    datasets = meta.get("datasets")
    lines.append(f"**Data:** {', '.join(map(str, datasets)) if isinstance(datasets, list) else datasets or 'Br35H'}"
                 f"; classes: {', '.join(map(_words, class_names))}; hospitals: {', '.join(map(str, hospitals))}")
    if det.get("calibration"):
        fpr = det.get("target_fpr")
        at = f", {100 * fpr:.0f}% clean false positives" if fpr else ""
        values = ", ".join(f"{h}: {c.get('threshold', float('nan')):.4g}" for h, c in det["calibration"].items())
        lines.append(f"**Detector** ({det.get('score', 'score')}) **thresholds** (per hospital{at}): {values}")
    if pur:
        lines.append(f"**Purifier:** t* in [{pur.get('t_min')}, {pur.get('t_max')}], {pur.get('ddim_steps')} DDIM steps")
    evaluation = ""
    if "## Evaluation" in body:
        section = body.split("## Evaluation", 1)[1]
        table = [ln for ln in section.split("\n## ", 1)[0].splitlines() if ln.startswith("|")]
        if table:
            evaluation = "\n\n**Evaluation (from the model card):**\n\n" + "\n".join(table)
    return "  \n".join(lines) + evaluation, body or "_This checkpoint has no model card (README.md)._"


def pipeline_summary(pipe) -> tuple[str, str]:
    """`card_summary` of a loaded (or loading) pipeline's checkpoint; never raises (an odd card or config gives a
    one-line summary instead)."""
    try:
        return card_summary(getattr(getattr(pipe, "source", None), "path", "") or ".", pipe.source_description,
                            pipe.class_names, pipe.hospitals, getattr(pipe, "tumour_types", None))
    except Exception as exc:  # noqa: BLE001 - an odd model card or config must never stop the app
        return (f"**Model:** {pipe.source_description}  \n_(summary unavailable: {type(exc).__name__})_",
                "_The model card could not be read._")
