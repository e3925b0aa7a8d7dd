"""MedFedPure demo (Gradio 6): upload a brain MRI slice, attack it, watch the defence detect and purify it.

    python app.py [--model SOURCE] [--revision REV] [--host 127.0.0.1] [--port 7860] [--share]

SOURCE: a checkpoint folder or a Hugging Face Hub repo id "user/name" (also MEDFEDPURE_MODEL / MEDFEDPURE_REVISION);
default: the bundled `pretrained/`. The app is UI only: every number and picture comes from the pipeline's
`ScanResult` (medfedpure.pipeline), rendered by medfedpure.app_render.

API (gradio_client, see the README): "/analyze" and "/analyze_batch".
Research demo, not a medical device; not for diagnosis.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls to outside hosts

import argparse  # noqa: E402
import atexit  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from medfedpure import app_render as render  # noqa: E402
from medfedpure.io import ScanReadError, dicom_frame_count, read_scan  # noqa: E402

try:  # Hugging Face Spaces (ZeroGPU): a GPU is attached only while a decorated function runs
    import spaces
except ImportError:  # everywhere else the decorator is simply not applied
    spaces = None

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
EXAMPLES = [("no35.jpg", "no tumour"), ("no411.jpg", "no tumour"), ("no427.jpg", "no tumour"),
            ("y1349.jpg", "tumour"), ("y1431.jpg", "tumour"), ("y1493.jpg", "tumour")]
ATTACKS = [("none", "none"), ("FGSM", "fgsm"), ("PGD (L-inf)", "pgd"),
           ("adaptive PGD through the whole defence", "adaptive")]
DEFAULT_EPS = round(8 / 255, 4)
EPS_MAX = 0.1
STEPS_MAX = 50
MAX_BATCH = 64
MAX_FRAME = 9999  # the frame slider's API bound; the page narrows it to the file's frames
BATCH_CHUNK = 16
DEFAULT_CONCURRENCY = int(os.environ.get("MEDFEDPURE_CONCURRENCY", "2"))
QUEUE_MAX_SIZE = int(os.environ.get("MEDFEDPURE_QUEUE_SIZE", "32"))
KEEP_OUTPUTS_S = 3600  # per-request report/CSV folders older than this are removed

CSS = """
.mfp-disclaimer {background:#fff4e5; border:1px solid #f0a000; border-radius:8px; padding:8px 14px;
                 color:#5a3b00; font-weight:600;}
.mfp-verdict {font-size:1.05em;}
.mfp-img img {width:100%; height:100%; object-fit:contain; image-rendering:pixelated;}
"""


# ------------------------------------------------------------------------------------------------ helpers
def _temp_root() -> Path:
    """GRADIO_TEMP_DIR when set (Gradio's own rule), else the system temp folder's gradio/."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _perturb(pipe, x, y, hospital: int, attack: str, eps: float, steps: int, seed: int, eot: int = 1):
    """The one place the app attacks a scan: medfedpure.attacks.make_attack, imported lazily.

    y: the label the attack pushes away from. The app does not know the true label, so callers pass the
    pipeline's own prediction on the clean scan. fgsm/pgd see the hospital's classifier only (the paper's
    protocol); adaptive attacks the whole defence (detector + purifier + classifier, EOT over the purifier noise).
    """
    if attack == "none" or eps <= 0:
        return x
    from medfedpure.attacks import make_attack

    extra = {"pipe": pipe, "hospital": hospital, "eot": eot} if attack == "adaptive" else {}
    attack_fn = make_attack(attack, pipe.classifier_for(hospital), eps=eps, step=eps / 4, steps=steps, seed=seed,
                            **extra)
    return attack_fn(x, y).clamp(0, 1)


def _front_matter(text: str) -> tuple[dict, str]:
    if not text.startswith("---"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    try:
        import yaml

        meta = yaml.safe_load(text[3:end]) or {}
    except Exception:  # noqa: BLE001 - a broken card must not stop the app
        meta = {}
    return (meta if isinstance(meta, dict) else {}), text[end + 4:].lstrip("\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001
        return {}


def model_summary(pipe) -> tuple[str, str]:
    """(short markdown summary, model card body) from the checkpoint's own files; robust when parts are absent."""
    try:
        return _model_summary(pipe)
    except Exception as exc:  # noqa: BLE001 - an odd model card or config must never stop the app
        return (f"**Model:** {pipe.source_description}  \n_(summary unavailable: {type(exc).__name__})_",
                "_The model card could not be read._")


def _model_summary(pipe) -> tuple[str, str]:
    root = Path(getattr(getattr(pipe, "source", None), "path", "") or ".")
    clf = _read_json(root / "classifier" / "config.json")
    det = _read_json(root / "detector" / "config.json")
    pur = _read_json(root / "purifier" / "purification.json")
    card = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").is_file() else ""
    meta, body = _front_matter(card)
    lines = [f"**Model:** {pipe.source_description or 'unknown source'}"]
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
    datasets = meta.get("datasets")
    lines.append(f"**Data:** {', '.join(map(str, datasets)) if isinstance(datasets, list) else datasets or 'Br35H'}"
                 f"; classes: {', '.join(render.pretty(c) for c in pipe.class_names)}; "
                 f"hospitals: {', '.join(map(str, pipe.hospitals))}")
    if det.get("calibration"):
        fpr = det.get("target_fpr")
        at = f", {100 * fpr:.0f}% clean false positives" if fpr else ""
        values = ", ".join(f"{h}: {c.get('threshold', float('nan')):.4g}" for h, c in det["calibration"].items())
        lines.append(f"**Detector thresholds** (per hospital{at}): {values}")
    if pur:
        lines.append(f"**Purifier:** t* in [{pur.get('t_min')}, {pur.get('t_max')}], "
                     f"{pur.get('ddim_steps')} DDIM steps")
    evaluation = ""
    if "## Evaluation" in body:
        section = body.split("## Evaluation", 1)[1]
        table = [ln for ln in section.split("\n## ", 1)[0].splitlines() if ln.startswith("|")]
        if table:
            evaluation = "\n\n**Evaluation (from the model card):**\n\n" + "\n".join(table)
    return "  \n".join(lines) + evaluation, body or "_This checkpoint has no model card (README.md)._"


def _model_record(pipe) -> dict:
    """Where the weights came from, for reports: Hub repo and commit, or the bundled/local folder's name only
    (a report never carries a path of the machine that served it)."""
    src = getattr(pipe, "source", None)
    origin = getattr(src, "origin", None)
    record = {"origin": origin, "repo_id": getattr(src, "repo_id", None), "revision": getattr(src, "revision", None)}
    if origin in ("hub", "hub-cache", "bundled"):
        record["description"] = pipe.source_description
    else:
        record["description"] = f"{origin or 'local'} checkpoint folder {Path(str(getattr(src, 'path', ''))).name}"
    return record


def _model_label(pipe) -> str:
    return _model_record(pipe)["description"]


def _png_writer(folder: Path):
    def write(name: str, rgb: np.ndarray) -> str:
        from PIL import Image

        path = folder / f"{name}.png"
        Image.fromarray(rgb).save(path, format="PNG")
        return str(path)

    return write


def _frame_arg(frame) -> int | None:
    if frame is None:
        return None
    frame = int(frame)
    return None if frame < 0 else frame


def _file_path(item) -> str:
    return str(getattr(item, "name", None) or getattr(item, "path", None) or item)


def _read(path, frame=None):
    """read_scan with its ScanReadError shown in the page (gr.Error keeps the app serving)."""
    if path is None:
        raise gr.Error("Upload a scan (PNG, JPEG or DICOM) or pick an example first.")
    try:
        return read_scan(_file_path(path), size=128, frame=frame)
    except ScanReadError as exc:
        raise gr.Error(str(exc)) from None


def _meta_markdown(meta: dict) -> str:
    bits = [f"{meta.get('format') or '?'}", f"{meta.get('width')} x {meta.get('height')} px"]
    if meta.get("frames") and meta["frames"] > 1:
        bits.append(f"frame {meta.get('frame', 0) + 1} of {meta['frames']}")
    if meta.get("modality"):
        bits.append(f"modality {meta['modality']}")
    if meta.get("bits_stored"):
        bits.append(f"{meta['bits_stored']}-bit")
    if meta.get("pixel_spacing"):
        bits.append(f"pixel spacing {meta['pixel_spacing']} mm")
    window = meta.get("window")
    if isinstance(window, dict) and window.get("center") is not None:
        bits.append(f"window C {window['center']:.4g} / W {window['width']:.4g} ({window.get('source', '?')})")
    elif isinstance(window, dict):
        bits.append(f"window: {window.get('source', 'auto')}")
    bits.append(f"analysed at {meta.get('size')} x {meta.get('size')} (aspect kept)")
    return "**Scan:** " + ", ".join(bits)


def _clean_meta(meta: dict) -> dict:
    """The non-identifying technical metadata (read_scan's META_KEYS) as JSON-safe values."""
    return render.jsonable({k: meta.get(k) for k in ("format", "mode", "width", "height", "frames", "frame",
                                                     "modality", "pixel_spacing", "slice_thickness", "bits_stored",
                                                     "window", "size")})


# ------------------------------------------------------------------------------------------------ the app
class DemoApp:
    """The callbacks; holds the pipeline loaded once at start."""

    def __init__(self, pipe, workdir: str | Path | None = None):
        import torch

        self.torch = torch
        self.pipe = pipe
        root = _temp_root()
        root.mkdir(parents=True, exist_ok=True)
        if workdir:
            self.workdir = Path(workdir)
        else:  # ours alone: removed when the process exits
            self.workdir = Path(tempfile.mkdtemp(prefix="medfedpure-app-", dir=root))
            atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------------------------- files
    def _outdir(self) -> Path:
        now = time.time()
        for old in self.workdir.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > KEEP_OUTPUTS_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        out = self.workdir / uuid.uuid4().hex[:12]
        out.mkdir(parents=True)
        return out

    def _preview(self, sc) -> str:
        return _png_writer(self._outdir())("preview", render.gray_rgb(sc.image))

    def _hospital(self, hospital) -> int:
        if hospital is None or hospital == "":
            return int(self.pipe.hospitals[0])
        try:
            hospital = int(hospital)
        except (TypeError, ValueError):
            raise gr.Error(f"Hospital must be one of {self.pipe.hospitals}, got {hospital!r}.") from None
        if hospital not in self.pipe.hospitals:
            raise gr.Error(f"Unknown hospital {hospital}; this checkpoint has hospitals {self.pipe.hospitals}.")
        return hospital

    @staticmethod
    def _attack_args(attack, eps, steps, eot=1) -> tuple[str, float, int, int]:
        attack = (attack or "none").lower()
        if attack not in {v for _, v in ATTACKS}:
            raise gr.Error(f"Unknown attack {attack!r}; choose none, fgsm, pgd or adaptive.")
        eps = float(DEFAULT_EPS if eps is None else eps)
        if not 0 <= eps <= EPS_MAX:
            raise gr.Error(f"eps must be between 0 and {EPS_MAX}, got {eps}.")
        steps = int(10 if steps is None else steps)
        if not 1 <= steps <= STEPS_MAX:
            raise gr.Error(f"steps must be between 1 and {STEPS_MAX}, got {steps}.")
        return attack, eps, steps, max(1, int(eot or 1))

    # --------------------------------------------------------------------------------- upload preview
    def inspect(self, scan):
        """On upload: a preview, the non-identifying metadata and, for multi-frame files, the frame picker."""
        hidden = gr.update(visible=False, value=-1, minimum=-1, maximum=MAX_FRAME)
        if scan is None:
            return None, "", hidden
        path = _file_path(scan)
        try:
            frames = dicom_frame_count(path)
            sc = read_scan(path, size=128)
        except ScanReadError as exc:
            gr.Warning(str(exc))
            return None, f"**Cannot read this file:** {exc}", hidden
        slider = hidden
        if frames > 1:
            slider = gr.update(visible=True, minimum=0, maximum=frames - 1, value=int(sc.meta.get("frame") or 0),
                               step=1, label=f"Frame (0-{frames - 1}; default: the middle one)")
        return self._preview(sc), _meta_markdown(sc.meta), slider

    def preview_frame(self, scan, frame):
        if scan is None or frame is None or int(frame) < 0:
            return gr.update(), gr.update()
        try:
            sc = read_scan(_file_path(scan), size=128, frame=int(frame))
        except ScanReadError as exc:
            gr.Warning(str(exc))
            return gr.update(), f"**Cannot read this frame:** {exc}"
        return self._preview(sc), _meta_markdown(sc.meta)

    # --------------------------------------------------------------------------------- one scan
    def analyze(self, scan, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                purify_always=False, seed=0, frame=-1, eot=1, make_report=True):
        """Attack (optional) -> detect -> purify -> classify one scan; outputs in the order of build_demo's list."""
        torch = self.torch
        t0 = time.perf_counter()
        hospital = self._hospital(hospital)
        attack, eps, steps, eot = self._attack_args(attack, eps, steps, eot)
        seed = int(seed or 0)
        purify = "never" if not defence else ("always" if purify_always else "flagged")
        sc = _read(scan, _frame_arg(frame))
        timings = {"read": (time.perf_counter() - t0) * 1000}
        pipe = self.pipe
        try:
            x = torch.from_numpy(sc.image)[None, None].to(pipe.device)
            clean = None
            if attack != "none":
                t = time.perf_counter()
                clean = pipe.analyze(x, hospital=hospital, purify="never", seed=seed)[0]
                timings["classify_clean"] = (time.perf_counter() - t) * 1000
                y = torch.tensor([int(np.argmax(clean.probabilities))], device=pipe.device)
                t = time.perf_counter()
                x = _perturb(pipe, x, y, hospital, attack, eps, steps, seed, eot)
                timings["attack"] = (time.perf_counter() - t) * 1000
            result = pipe.analyze(x, hospital=hospital, purify=purify, seed=seed)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear message in the page, the app keeps serving
            raise gr.Error(f"Analysis failed: {type(exc).__name__}: {exc}") from None
        res = result[0]
        timings.update({k: v for k, v in res.timings_ms.items() if k != "total"})
        t_render = time.perf_counter()
        return self._render_one(sc, res, clean, result.device, hospital, attack, eps, steps, seed, eot, defence,
                                purify, timings, t0, t_render, bool(make_report))

    def _render_one(self, sc, res, clean, device, hospital, attack, eps, steps, seed, eot, defence, purify,
                    timings, t0, t_render, make_report=True):
        pipe = self.pipe
        original, analysed = sc.image, res.input
        sid = render.scan_id(original)
        stats = render.perturbation_stats(original, analysed)
        pert_img, factor = render.perturbation_image(original, analysed, scale=eps if attack != "none" else None)
        overlay = render.error_overlay(res.input, res.error_map)
        quantiles = pipe.clean_quantiles(hospital)
        percentile = render.clean_percentile(res.score, quantiles)
        plot = render.score_plot(quantiles, res.threshold, res.score, clean.score if clean is not None else None)
        names = [render.pretty(c) for c in pipe.class_names]
        before = dict(zip(names, map(float, res.probabilities)))
        after = dict(zip(names, map(float, res.final_probabilities)))
        text = render.verdict(res, defence=defence, attack=attack, eps=eps, quantiles=quantiles,
                              clean_prediction=clean.prediction if clean is not None else None)
        psnr = "inf" if not np.isfinite(stats["psnr_db"]) else f"{stats['psnr_db']:.1f} dB"
        pert_md = (f"L-inf **{stats['linf']:.4f}** ({stats['linf'] * 255:.1f}/255), L2 **{stats['l2']:.3f}**, "
                   f"PSNR **{psnr}**" + (f"; shown x{factor:.0f} (colour scale +-eps)" if attack != "none" else
                                         "; no attack, nothing changed"))
        purified = res.purified
        attack_info = {"name": attack} if attack == "none" else {
            "name": attack, "eps": eps, "step": eps / 4, "steps": steps if attack != "fgsm" else 1, "seed": seed,
            "target": "pushes away from the classifier's prediction on the clean scan (true label unknown)",
            **({"eot": eot, "threat_model": "white-box on the whole defence"} if attack == "adaptive" else
               {"threat_model": "sees the hospital's classifier only (paper protocol)"})}
        summary = res.summary()
        summary["name"] = sid
        record = {
            "disclaimer": render.DISCLAIMER, "scan": {"id": sid, **_clean_meta(sc.meta)},
            "model": _model_record(pipe),
            "hospital": hospital, "class_names": list(pipe.class_names), "device": device, "attack": attack_info,
            "defence": {"on": bool(defence), "purify": purify}, "perturbation": stats,
            "clean": None if clean is None else {**clean.summary(), "name": sid},
            "result": summary, "clean_percentile": percentile, "verdict": text.replace("**", ""),
            "timings_ms": {k: round(v, 1) for k, v in timings.items()},
        }
        header = (f"hospital {hospital} | attack: {attack}" + (f" eps {eps:.4g}" if attack != "none" else "")
                  + f" | defence {'on' if defence else 'off'} ({purify}) | model: {_model_label(pipe)}")
        panels = {"Original": original, "Analysed scan" + (f" ({attack})" if attack != "none" else ""): analysed,
                  f"Perturbation (x{factor:.0f})" if attack != "none" else "Perturbation (none)": pert_img,
                  "MAE reconstruction": res.reconstruction, "Error heat map": overlay,
                  f"Purified (t*={res.t_star})" if purified is not None else "Purified": purified}
        info = {"name": sid, "verdict": record["verdict"], "class_names": pipe.class_names,
                "probabilities": res.probabilities, "final_probabilities": res.final_probabilities,
                "score": res.score, "threshold": res.threshold, "quantiles": quantiles,
                "clean_score": clean.score if clean is not None else None, "header": header,
                "timings_ms": record["timings_ms"], "device": device}
        out = self._outdir()
        files = render.write_report(out, f"medfedpure-{sid}", panels, info, record) if make_report else []
        # Pictures go out as PNG files of this request's own folder, not as arrays: Gradio writes arrays into its
        # cache under a content hash without an atomic rename, so two users getting identical pictures at the
        # same moment could be served a half-written file (seen with 8 concurrent users).
        png = _png_writer(out)
        images = (png("original", render.gray_rgb(original)), png("analysed", render.gray_rgb(analysed)),
                  png("perturbation", pert_img), png("reconstruction", render.gray_rgb(res.reconstruction)),
                  png("error_map", overlay), png("purified", render.gray_rgb(purified)) if purified is not None
                  else None, png("score", plot))
        slider = (images[0], images[5] or images[1])
        timings["render"] = (time.perf_counter() - t_render) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        record["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
        return (images[0], images[1], images[2], pert_md, images[3], images[4], images[5], images[6], before, after,
                text, slider, render.timings_markdown(record["timings_ms"], device), render.jsonable(record),
                [str(f) for f in files] or None)

    # --------------------------------------------------------------------------------- many scans
    def analyze_batch(self, files, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                      purify_always=False, seed=0):
        """Several scans (or the files of a DICOM series) -> table, CSV, status. A bad file gives an error row."""
        import pandas as pd

        torch = self.torch
        t0 = time.perf_counter()
        if not files:
            raise gr.Error("Upload one or more scans (PNG, JPEG or DICOM files) first.")
        files = files if isinstance(files, (list, tuple)) else [files]
        if len(files) > MAX_BATCH:
            raise gr.Error(f"At most {MAX_BATCH} files per batch, got {len(files)}.")
        hospital = self._hospital(hospital)
        attack, eps, steps, _ = self._attack_args(attack, eps, steps)
        seed = int(seed or 0)
        purify = "never" if not defence else ("always" if purify_always else "flagged")
        pipe = self.pipe
        rows: list[dict | None] = [None] * len(files)
        good = []  # (index, display file name, scan)
        for i, item in enumerate(files):
            path = _file_path(item)
            name = Path(path).name
            try:
                sc = read_scan(path, size=128)
                good.append((i, name, sc))
            except ScanReadError as exc:
                rows[i] = render.batch_row(name, error=str(exc))
        for start in range(0, len(good), BATCH_CHUNK):
            chunk = good[start:start + BATCH_CHUNK]
            try:
                x = torch.from_numpy(np.stack([sc.image for _, _, sc in chunk]))[:, None].to(pipe.device)
                if attack != "none":
                    clean = pipe.analyze(x, hospital=hospital, purify="never", seed=seed)
                    y = torch.tensor([int(np.argmax(r.probabilities)) for r in clean], device=pipe.device)
                    x = _perturb(pipe, x, y, hospital, attack, eps, steps, seed)
                results = list(pipe.analyze(x, hospital=hospital, purify=purify, seed=seed))
            except Exception as exc:  # noqa: BLE001 - these rows fail, the others still count
                results = [None] * len(chunk)
                message = f"analysis failed: {type(exc).__name__}: {exc}"
            for (i, name, sc), res in zip(chunk, results):
                frames = sc.meta.get("frames") or 1
                frame = f"{(sc.meta.get('frame') or 0) + 1} of {frames}" if frames > 1 else None
                rows[i] = render.batch_row(name, res, frame=frame, scan=render.scan_id(sc.image),
                                           error=None if res is not None else message)
        csv_path = render.write_batch_csv(rows, self._outdir() / "medfedpure-batch.csv")
        n_ok = sum(1 for r in rows if not r["error"])
        n_flag = sum(1 for r in rows if r["flagged"] is True)
        status = (f"{len(rows)} file(s): {n_ok} analysed, {len(rows) - n_ok} error(s); {n_flag} flagged as "
                  f"suspicious. Hospital {hospital}, attack {attack}, defence {'on' if defence else 'off'} "
                  f"({purify}); device {pipe.device}; {(time.perf_counter() - t0):.1f} s.")
        return pd.DataFrame(rows, columns=render.BATCH_COLUMNS), str(csv_path), status


# ------------------------------------------------------------------------------------------------ the page
def _gpu(fn, duration: int):
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _img(label: str) -> gr.Image:
    return gr.Image(label=label, format="png", height=256, interactive=False, elem_classes="mfp-img")


def build_demo(pipe, workdir: str | Path | None = None) -> gr.Blocks:
    app = DemoApp(pipe, workdir)
    summary, card = model_summary(pipe)
    hospitals = [(f"Hospital {h}", int(h)) for h in pipe.hospitals]
    with gr.Blocks(title="MedFedPure demo", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# MedFedPure: brain-tumour MRI classifier with adversarial detection and purification")
        gr.HTML(f"<div class='mfp-disclaimer'>&#9888; {render.DISCLAIMER} Outputs of an experimental model "
                "must not inform any clinical decision. Do not upload scans that identify a patient.</div>")
        gr.Markdown(
            "A federated, per-hospital classifier (tumour / no tumour) is protected by a masked-autoencoder "
            "**detector** (scans it reconstructs badly are flagged) and an adaptive **diffusion purifier** (flagged "
            "scans are noised to a depth t* that grows with the score, then denoised). Attack a scan and watch "
            "each stage. Reimplementation of Karami et al., *MedFedPure*, arXiv 2511.11625.")
        gr.Markdown(f"**Model:** {pipe.source_description or 'unknown source'} &middot; device **{pipe.device}** "
                    f"&middot; hospitals {', '.join(map(str, pipe.hospitals))}")
        with gr.Accordion("Model summary", open=False):
            gr.Markdown(summary)
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
        with gr.Tab("Analyse a scan"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    scan_in = gr.File(label="Scan: PNG, JPEG or DICOM (any file; its content decides)",
                                      file_count="single", type="filepath")
                    preview = gr.Image(label="Preview (as the model sees it)", height=180, interactive=False,
                                       format="png", buttons=[])
                    scan_info = gr.Markdown()
                    frame = gr.Slider(-1, MAX_FRAME, value=-1, step=1, visible=False,
                                      label="Frame (-1: the default, the middle frame of a DICOM)")
                    gr.Examples(examples=[[str(EXAMPLES_DIR / f)] for f, _ in EXAMPLES], inputs=[scan_in],
                                example_labels=[f"{lab} ({Path(f).stem})" for f, lab in EXAMPLES],
                                label="Example scans", cache_examples=False)
                    gr.Markdown("<small>Examples: Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), via "
                                "github.com/07Harjot/Brain-tumor-detection-system; licence not stated by the authors "
                                "(research/educational use). See assets/examples/SOURCE.md. The models may have "
                                "seen them in training: they demonstrate, they do not measure.</small>")
                    hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True,
                                           label="Hospital (whose model and threshold)")
                    attack = gr.Dropdown(ATTACKS, value="none", allow_custom_value=True, label="Attack",
                                         info="fgsm/pgd see the classifier only; adaptive back-propagates through the "
                                              "whole defence (slow on CPU)")
                    with gr.Row():
                        eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, label="eps (L-inf, [0,1] pixels)")
                        steps = gr.Slider(1, STEPS_MAX, value=10, step=1, label="steps (PGD / adaptive)")
                    with gr.Row():
                        defence = gr.Checkbox(value=True, label="Defence on")
                        purify_always = gr.Checkbox(value=False, label="Purify always (even if not flagged)")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        eot = gr.Slider(1, 8, value=1, step=1, label="EOT samples (adaptive only)")
                    make_report = gr.Checkbox(value=True, label="Build the PNG/PDF report (about 0.5 s)")
                    run = gr.Button("Analyse", variant="primary")
                with gr.Column(scale=2):
                    verdict = gr.Markdown(label="verdict", elem_classes="mfp-verdict")
                    with gr.Row():
                        img_orig = _img("Original")
                        img_adv = _img("Analysed scan (attacked)")
                        img_pert = _img("Perturbation, amplified")
                    pert_md = gr.Markdown(label="perturbation")
                    with gr.Row():
                        img_rec = _img("MAE reconstruction")
                        img_err = _img("Error heat map")
                        img_pur = _img("Purified")
                    score_img = gr.Image(label="Detector score vs this hospital's clean scans", format="png",
                                         interactive=False)
                    with gr.Row():
                        lab_before = gr.Label(label="Classifier on the analysed scan (before the defence)")
                        lab_after = gr.Label(label="Final answer (after the defence)")
                    slider = gr.ImageSlider(label="Original vs purified (drag)", format="png", max_height=360,
                                            interactive=False)
                    timings = gr.Markdown(label="timings")
                    with gr.Accordion("All numbers (JSON)", open=False):
                        details = gr.JSON(label="details")
                    report = gr.File(label="Report: PNG, PDF figure and JSON (no patient identifiers)",
                                     file_count="multiple", interactive=False)
            inputs = [scan_in, hospital, attack, eps, steps, defence, purify_always, seed, frame, eot, make_report]
            outputs = [img_orig, img_adv, img_pert, pert_md, img_rec, img_err, img_pur, score_img, lab_before,
                       lab_after, verdict, slider, timings, details, report]
            run.click(_gpu(app.analyze, 120), inputs, outputs, api_name="analyze")
            scan_in.change(app.inspect, [scan_in], [preview, scan_info, frame], api_visibility="undocumented",
                           api_name="inspect", concurrency_limit=None)
            frame.release(app.preview_frame, [scan_in, frame], [preview, scan_info], api_visibility="undocumented",
                          api_name="preview_frame", concurrency_limit=None)
        with gr.Tab("Batch"):
            gr.Markdown("Several scans, or the files of a DICOM series (one row per file; a multi-frame file is "
                        "read at its middle frame). A file that cannot be read gets an error row; the rest are "
                        "still analysed.")
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    b_files = gr.File(label="Scans", file_count="multiple", type="filepath")
                    b_hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True, label="Hospital")
                    b_attack = gr.Dropdown(ATTACKS, value="none", allow_custom_value=True, label="Attack")
                    with gr.Row():
                        b_eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, label="eps")
                        b_steps = gr.Slider(1, STEPS_MAX, value=10, step=1, label="steps")
                    with gr.Row():
                        b_defence = gr.Checkbox(value=True, label="Defence on")
                        b_always = gr.Checkbox(value=False, label="Purify always")
                        b_seed = gr.Number(value=0, precision=0, label="Seed")
                    b_run = gr.Button("Analyse all", variant="primary")
                with gr.Column(scale=2):
                    b_status = gr.Markdown(label="status")
                    b_table = gr.Dataframe(headers=render.BATCH_COLUMNS, label="Results", interactive=False,
                                           wrap=True)
                    b_csv = gr.File(label="CSV", interactive=False)
            b_run.click(_gpu(app.analyze_batch, 300),
                        [b_files, b_hospital, b_attack, b_eps, b_steps, b_defence, b_always, b_seed],
                        [b_table, b_csv, b_status], api_name="analyze_batch")
        gr.Markdown(f"<small>{render.DISCLAIMER} Device: {pipe.device}. Scans are processed in memory and in "
                    "temporary files that are deleted within hours; reports name a scan by a hash of its pixels, "
                    "never by its file name or DICOM tags.</small>")
    demo.app_state = app  # for tests and benchmarks
    return demo


def load_pipeline(model: str | None = None, revision: str | None = None):
    from medfedpure.pipeline import MedFedPure

    return MedFedPure.from_pretrained(model, revision=revision)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(EXAMPLES_DIR)],
                       max_file_size="200mb", theme=gr.themes.Soft(), css=CSS, **kwargs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="MedFedPure demo app (Gradio). " + render.DISCLAIMER)
    p.add_argument("--model", default=os.environ.get("MEDFEDPURE_MODEL") or None,
                   help="checkpoint folder or Hugging Face repo id user/name (env MEDFEDPURE_MODEL; "
                        "default: the bundled pretrained/)")
    p.add_argument("--revision", default=os.environ.get("MEDFEDPURE_REVISION") or None,
                   help="Hub revision: pin a commit hash (env MEDFEDPURE_REVISION)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (default 127.0.0.1; env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   help="port (default 7860; env GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        pipe = load_pipeline(args.model, args.revision)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"error: could not load the model: {exc}", file=sys.stderr)
        return 1
    print(f"MedFedPure: {pipe.source_description}; device {pipe.device}", flush=True)
    launch(build_demo(pipe), args.host, args.port, args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
