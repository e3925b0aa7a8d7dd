"""MedFedPure demo (Gradio 6): upload a brain MRI slice, attack it, watch the defence detect and purify it.

    python app.py [--model SOURCE] [--revision REV] [--host 127.0.0.1] [--port 7860] [--share]
                  [--time-budget SECONDS] [--keep-reports SECONDS] [--threads N]

SOURCE: a checkpoint folder or a Hugging Face Hub repo id "user/name" (also MEDFEDPURE_MODEL / MEDFEDPURE_REVISION);
default: the bundled `pretrained/`. The app is UI only: every number and picture comes from the pipeline's
`ScanResult` (medfedpure.pipeline), rendered by medfedpure.app_render.

- Every request first clears every result on the page; an error or a stopped request leaves them empty.
- Nothing a user uploads is named anywhere (page, table, CSV, report, API error, log): a scan is "scan-" plus a
  hash of its pixels. Uploads are read into memory and deleted at once; reports are deleted when the page is
  closed, after --keep-reports seconds at the latest, and on SIGTERM (medfedpure.app_files).
- Each analysis has a time budget (--time-budget, env MEDFEDPURE_TIME_BUDGET; stated on the page), a Stop button
  and per-step progress (medfedpure.app_progress); the attack settings are limited to what the hardware runs in
  that time (fewer steps and EOT samples on a CPU).

API (gradio_client, see the README): "/analyze" and "/analyze_batch".
Research demo, not a medical device; not for diagnosis.
"""

from __future__ import annotations

import os
import time

_T_START = time.perf_counter()  # for the start-up times in the log
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls to outside hosts
_PRIVATE_TEMP = None
if __name__ == "__main__":
    # Served: everything Gradio and the app write (uploads, copies, reports) goes into one folder of this process's
    # own, made before gradio is imported (it reads GRADIO_TEMP_DIR at import) and removed on SIGTERM and at exit.
    from medfedpure.app_files import private_temp_dir as _private_temp_dir

    _PRIVATE_TEMP = _private_temp_dir()
    os.environ["GRADIO_TEMP_DIR"] = str(_PRIVATE_TEMP)

import argparse  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from medfedpure import app_progress  # noqa: E402
from medfedpure import app_render as render  # noqa: E402
from medfedpure.app_files import (  # noqa: E402
    Loaded, Sessions, consume_upload, install_signal_handlers, private_temp_dir, remove_tree, setup_logging,
)
from medfedpure.app_boot import LazyPipeline  # noqa: E402
from medfedpure.app_progress import Stopped, Tracker, tracking  # noqa: E402
from medfedpure.io import ScanReadError, dicom_frame_count, read_scan  # noqa: E402

try:  # Hugging Face Spaces (ZeroGPU): a GPU is attached only while a decorated function runs
    import spaces
except ImportError:  # everywhere else the decorator is simply not applied
    spaces = None

log = setup_logging()

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
# (file in assets/examples, the example's label on the page); see assets/examples/SOURCE.md
EXAMPLES = [(f, label) for f, label in (
    ("no35.jpg", "no tumour (no35)"), ("no411.jpg", "no tumour (no411)"), ("no427.jpg", "no tumour (no427)"),
    ("y1349.jpg", "tumour (y1349)"), ("y1431.jpg", "tumour (y1431)"), ("y1493.jpg", "tumour (y1493)"),
    ("Tr-gl_0020.jpg", "glioma, coronal T1 (Tr-gl_0020)"), ("TCGA_DU_5855_19951217_17.png", "glioma, FLAIR (TCGA)"),
    ("TCGA_DU_6404_19850629_21.png", "no tumour on this slice, FLAIR (TCGA)"),
) if (Path(__file__).resolve().parent / "assets" / "examples" / f).is_file()]
ATTACKS = [("none", "none"), ("FGSM", "fgsm"), ("PGD (L-inf)", "pgd"),
           ("adaptive PGD through the whole defence", "adaptive")]
DEFAULT_EPS = round(8 / 255, 4)
EPS_MAX = 0.1
MAX_BATCH = 64
MAX_FRAME = 9999  # the frame slider's API bound; the page narrows it to the file's frames
BATCH_CHUNK = 16
# Pixel widths of the batch table's columns (render.BATCH_COLUMNS): row, scan and status first, so an error is
# readable at 1400 px; the numbers after them scroll.
BATCH_WIDTHS = ["48px", "140px", "250px", "96px", "80px", "96px", "110px", "72px", "84px", "84px", "56px", "110px",
                "64px"]
SCAN_NAME = "scan"  # the only name the reader is ever given: its messages never carry the file's own name
KEEP_FRAMES_BYTES = 256 * 2**20  # a multi-frame file up to this size stays in memory so another frame can be shown
DEFAULT_CONCURRENCY = int(os.environ.get("MEDFEDPURE_CONCURRENCY", "2"))
QUEUE_MAX_SIZE = int(os.environ.get("MEDFEDPURE_QUEUE_SIZE", "32"))
TIME_BUDGET_S = float(os.environ.get("MEDFEDPURE_TIME_BUDGET", "60"))  # per analysis; 0: no limit
KEEP_OUTPUTS_S = float(os.environ.get("MEDFEDPURE_KEEP_REPORTS", "1800"))  # report folders live at most this long

CSS = """
.mfp-disclaimer {background:#fff4e5; border:1px solid #f0a000; border-radius:8px; padding:8px 14px;
                 color:#5a3b00; font-weight:600;}
.mfp-verdict {min-height:64px;}
.mfp-verdict h3 {margin:0 0 4px 0;}
.mfp-grid {display:grid; grid-template-columns:repeat(3, minmax(0, 1fr)); gap:10px;}
.mfp-panel {margin:0; display:flex; flex-direction:column; gap:3px;}
.mfp-title {font-weight:600; font-size:0.9em; line-height:1.25; overflow-wrap:anywhere;}
.mfp-panel img {width:100%; aspect-ratio:1/1; object-fit:contain; image-rendering:pixelated; background:#000;
                border-radius:4px;}
.mfp-blank {width:100%; aspect-ratio:1/1; display:flex; align-items:center; justify-content:center;
            text-align:center; padding:10px; box-sizing:border-box; background:#f2f2f2; color:#555;
            border:1px dashed #bbb; border-radius:4px; font-size:0.85em;}
.mfp-note {font-size:0.8em; color:#555; line-height:1.3;}
.mfp-row {display:grid; grid-template-columns:minmax(0, 3fr) minmax(0, 2fr); gap:14px; margin-top:12px;}
.mfp-plot {min-width:0;} .mfp-svg {display:block; max-width:520px;}
.mfp-legend {display:flex; flex-wrap:wrap; gap:4px 12px; font-size:0.8em; color:#333;}
.mfp-legend i {display:inline-block; width:14px; height:3px; margin:0 5px 3px 0; vertical-align:middle;}
.mfp-bars {margin-bottom:10px;}
.mfp-bar {display:grid; grid-template-columns:92px minmax(0, 1fr) 52px; gap:6px; align-items:center;
          font-size:0.85em;}
.mfp-bar-track {height:12px; background:#eee; border-radius:3px; overflow:hidden;}
.mfp-bar-fill {display:block; height:100%; background:#2d6ebe;}
.mfp-muted .mfp-bar-fill {background:#aaa;} .mfp-muted {color:#777;}
.mfp-preview img {width:180px; height:180px; image-rendering:pixelated; background:#000; border-radius:4px;}
@media (max-width: 700px) {.mfp-grid {grid-template-columns:repeat(2, minmax(0, 1fr));}
                           .mfp-row {grid-template-columns:1fr;}}
"""


class UserError(Exception):
    """A problem with what the user sent: shown in plain words, logged as one line without a traceback."""


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Limits:
    """What the attack settings may ask for on this hardware, so that a request fits in the time budget."""

    device: str
    steps_max: int
    adaptive_steps_max: int
    eot_max: int

    @classmethod
    def for_device(cls, device) -> "Limits":
        kind = str(device).split(":")[0]
        if kind == "cuda":
            return cls("GPU", steps_max=50, adaptive_steps_max=50, eot_max=8)
        # 2-core CPU, bundled model: PGD costs ~20 ms a step; the adaptive attack ~1-2 s a step per EOT sample.
        return cls("CPU" if kind == "cpu" else kind.upper(), steps_max=20, adaptive_steps_max=10, eot_max=2)

    def text(self, budget_s: float) -> str:
        budget = f"each analysis stops after {budget_s:.0f} s" if budget_s > 0 else "no time limit per analysis"
        return (f"This server runs on a **{self.device}**: {budget}; at most {self.steps_max} attack steps "
                f"(adaptive: {self.adaptive_steps_max}) and {self.eot_max} EOT samples.")


def _temp_root() -> Path:
    """GRADIO_TEMP_DIR when set (Gradio's own rule), else the system temp folder's gradio/."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _upload_roots() -> list[Path]:
    roots = [_temp_root()]
    try:
        from gradio.utils import get_upload_folder

        roots.append(Path(get_upload_folder()))
    except Exception:  # noqa: BLE001
        pass
    return roots


@functools.lru_cache(maxsize=1)
def _example_digests() -> dict[str, str]:
    """file name -> sha256 of each example scan shipped with the app."""
    out = {}
    for name, _ in EXAMPLES:
        try:
            out[name] = hashlib.sha256((EXAMPLES_DIR / name).read_bytes()).hexdigest()
        except OSError:
            pass
    return out


def _is_example_copy(path: Path, data: bytes) -> bool:
    """Gradio's cached copy of one of our examples (same name and bytes): not user data, and Gradio serves the
    same copy again on the next click of that example, so it is left in place."""
    digest = _example_digests().get(Path(path).name)
    return digest is not None and hashlib.sha256(data).hexdigest() == digest


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
    tumour_types = getattr(pipe, "tumour_types", None) or clf.get("tumour_types") or []
    lines.append("**Tumour type:** " + (", ".join(render.pretty(t) for t in tumour_types) if tumour_types else
                                        "not estimated by this model"))
    datasets = meta.get("datasets")
    lines.append(f"**Data:** {', '.join(map(str, datasets)) if isinstance(datasets, list) else datasets or 'Br35H'}"
                 f"; classes: {', '.join(render.pretty(c) for c in pipe.class_names)}; "
                 f"hospitals: {', '.join(map(str, pipe.hospitals))}")
    if det.get("calibration"):
        fpr = det.get("target_fpr")
        at = f", {100 * fpr:.0f}% clean false positives" if fpr else ""
        values = ", ".join(f"{h}: {c.get('threshold', float('nan')):.4g}" for h, c in det["calibration"].items())
        lines.append(f"**Detector** ({det.get('score', 'score')}) **thresholds** (per hospital{at}): {values}")
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


def _frame_arg(frame) -> int | None:
    """The page and the API count frames from 1 (as "frame 3 of 5" does); 0 or -1: the reader's default."""
    if frame is None or frame == "":
        return None
    try:
        frame = int(frame)
    except (TypeError, ValueError):
        raise UserError(f"frame must be a whole number (1 = the first frame), got {frame!r}.") from None
    return None if frame <= 0 else frame - 1


def _file_path(item) -> str:
    return str(getattr(item, "name", None) or getattr(item, "path", None) or item)


def _meta_markdown(meta: dict, sid: str) -> str:
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
    return (f"**Loaded {sid}** (named by a hash of its pixels; the file itself was deleted once read): "
            + ", ".join(bits))


def _clean_meta(meta: dict) -> dict:
    """The non-identifying technical metadata (read_scan's META_KEYS) as JSON-safe values."""
    return render.jsonable({k: meta.get(k) for k in ("format", "mode", "width", "height", "frames", "frame",
                                                     "modality", "pixel_spacing", "slice_thickness", "bits_stored",
                                                     "window", "size")})


def _preview_html(sc) -> str:
    return (f"<div class='mfp-preview'><img alt='preview' src='{render.data_uri(render.gray_rgb(sc.image))}'>"
            "</div>")


def _session_hash(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


# ------------------------------------------------------------------------------------------------ the app
class DemoApp:
    """The callbacks; holds the pipeline loaded once at start and the per-session state."""

    N_OUT = 6  # verdict, panels, compare slider, timings, details, report

    def __init__(self, pipe, workdir: str | Path | None = None, *, time_budget_s: float | None = None,
                 keep_s: float | None = None, limits: Limits | None = None):
        self.pipe = pipe  # a MedFedPure pipeline, or a LazyPipeline still loading (python app.py)
        self._fixed_limits = limits is not None
        self.limits = limits or Limits.for_device(pipe.device)
        self._ready = False
        self._ready_lock = threading.Lock()
        self.time_budget_s = TIME_BUDGET_S if time_budget_s is None else float(time_budget_s)
        root = _temp_root()
        root.mkdir(parents=True, exist_ok=True)
        # Inside Gradio's temp folder, so reports are served from where they are written (no second copy).
        workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="medfedpure-app-", dir=root))
        self.sessions = Sessions(workdir, KEEP_OUTPUTS_S if keep_s is None else keep_s)
        self.sessions.register_atexit()
        self.sessions.start_sweeper()
        self.workdir = self.sessions.workdir

    @property
    def torch(self):
        import torch

        return torch

    def _real_pipe(self, timeout: float | None = None):
        return self.pipe.wait(timeout) if isinstance(self.pipe, LazyPipeline) else self.pipe

    def ensure_ready(self, tracker: Tracker | None = None, timeout: float | None = None):
        """Wait for the models (python app.py serves the page before they are loaded), then, once: install the
        progress hooks and set the limits for the real device."""
        if self._ready:
            return
        if tracker is not None and isinstance(self.pipe, LazyPipeline) and not self.pipe.loaded:
            tracker.stage("waiting for the models to finish loading")
        try:
            real = self._real_pipe(timeout)
        except RuntimeError as exc:
            raise UserError(f"The app is not ready: {exc}. Try again in a moment.") from None
        with self._ready_lock:
            if not self._ready:
                app_progress.install_hooks(real)
                render.warm_up()  # fonts and code paths of the figures, so the first user does not pay for them
                if not self._fixed_limits:
                    self.limits = Limits.for_device(real.device)
                self._ready = True

    def page_info(self):
        """On each page load: the header and limits texts and the attack sliders for the real device (the page
        may have been built before the models were loaded, from a guess)."""
        try:
            self.ensure_ready(timeout=900)
        except UserError:
            return (gr.update(),) * 6
        lim = self.limits
        text = f"<small>{lim.text(self.time_budget_s)}</small>"
        return (self.header_text(), text, text,
                gr.update(maximum=lim.steps_max, label=f"steps (PGD at most {lim.steps_max}, adaptive "
                                                       f"{lim.adaptive_steps_max})"),
                gr.update(maximum=lim.eot_max, label=f"EOT samples (adaptive only, at most {lim.eot_max})"),
                gr.update(maximum=lim.steps_max))

    def header_text(self) -> str:
        pipe = self.pipe
        loading = isinstance(pipe, LazyPipeline) and not pipe.loaded
        device = f"device **{pipe.device}**" + (" (loading the models...)" if loading else "")
        return (f"**Model:** {pipe.source_description or 'unknown source'} &middot; {device} "
                f"&middot; hospitals {', '.join(map(str, pipe.hospitals))}")

    # --------------------------------------------------------------------------------- requests
    @contextmanager
    def _request(self, request, progress=None):
        """Session, cancel flag and progress tracker of one request (the tracker is the thread's current one)."""
        session = self.sessions.get(_session_hash(request))
        cancel = threading.Event()
        session.cancels.add(cancel)
        tracker = Tracker(self.time_budget_s, cancel, progress)
        try:
            with tracking(tracker):
                self.ensure_ready(tracker)
                yield session, tracker
        finally:
            session.cancels.discard(cancel)

    def stop(self, request: gr.Request = None):
        """The Stop button: every running request of this session ends at its next model call; the results stay
        empty and the verdict box says so."""
        session = self.sessions.peek(_session_hash(request))
        running = list(session.cancels) if session is not None else []
        for event in running:
            event.set()
        if running:
            log.info("stop: %d running request(s) of a session stopped", len(running))
        return ("### Stopped\nYou stopped the analysis. Nothing is shown for an unfinished analysis." if running else
                gr.update())

    def end_session(self, request: gr.Request = None):
        """The page was closed: its scans leave memory and its report folders are deleted."""
        self.sessions.drop(_session_hash(request))

    @staticmethod
    def _user_error(message: str, where: str = "request") -> gr.Error:
        log.info("%s: user error: %s", where, message)
        return gr.Error(message, print_exception=False)

    # --------------------------------------------------------------------------------- reading
    def _read_upload(self, item, frame=None, keep_frames: bool = False) -> Loaded:
        """Read an uploaded file into memory, delete it, decode one frame -> Loaded. Raises UserError."""
        if item is None:
            raise UserError("Upload a scan (PNG, JPEG or DICOM) or pick an example first.")
        try:
            data = consume_upload(_file_path(item), _upload_roots(), keep=_is_example_copy)
        except OSError:
            raise UserError("The uploaded file could not be read; upload it again.") from None
        try:
            frames = dicom_frame_count(data)
            sc = read_scan(data, size=128, frame=frame, name=SCAN_NAME)
        except ScanReadError as exc:
            raise UserError(render.user_message(exc, SCAN_NAME)) from None
        keep = keep_frames and frames > 1 and len(data) <= KEEP_FRAMES_BYTES
        return Loaded(sc, frames=frames, data=data if keep else None)

    def _frame_of(self, loaded: Loaded, frame) -> Loaded:
        want = _frame_arg(frame)
        if want is None or want == loaded.scan.meta.get("frame") or (loaded.frames <= 1 and want == 0):
            return loaded
        if loaded.data is None:
            if loaded.frames <= 1:
                raise UserError(f"Frame {want + 1} does not exist: the file has only frame 1.")
            raise UserError("This file is too large to switch frames; analysing its default frame only.")
        try:
            sc = read_scan(loaded.data, size=128, frame=want, name=SCAN_NAME)
        except ScanReadError as exc:
            raise UserError(render.user_message(exc, SCAN_NAME).replace(f"frame {want}", f"frame {want + 1}")
                            .replace("frames 0 to", "frames 1 to").replace("only frame 0", "only frame 1")) \
                from None
        return Loaded(sc, frames=loaded.frames, data=loaded.data)

    # --------------------------------------------------------------------------------- upload preview
    def cleared(self) -> tuple:
        """Every result output emptied (the first thing each new request or upload does)."""
        return ("", "", gr.update(value=None, visible=False), "", None, None)

    def inspect(self, scan, request: gr.Request = None):
        """On upload or example click: read the file into memory, delete it, clear the upload box and every result,
        show a preview, the non-identifying metadata and, for multi-frame files, the frame picker.

        Outputs: preview, info, frame slider, the upload box, then the N_OUT result outputs."""
        if scan is None:  # the upload box was just cleared (by this function): nothing changes
            return (gr.update(),) * (4 + self.N_OUT)
        hidden = gr.update(visible=False, value=0, minimum=0, maximum=MAX_FRAME)
        session = self.sessions.get(_session_hash(request))
        session.scan = None  # a new upload replaces the last scan, whatever happens next
        try:
            loaded = self._read_upload(scan, keep_frames=True)
        except UserError as exc:
            log.info("upload: user error: %s", exc)
            gr.Warning(f"Cannot read this file: {exc}")
            return (None, f"**Cannot read this file:** {exc}", hidden, gr.update(value=None), *self.cleared())
        session.scan = loaded
        sc = loaded.scan
        slider = hidden
        if loaded.frames > 1:
            slider = gr.update(visible=True, minimum=1, maximum=loaded.frames, step=1,
                               value=int(sc.meta.get("frame") or 0) + 1,
                               label=f"Frame (1 to {loaded.frames}; default: the middle one)")
        return (_preview_html(sc), _meta_markdown(sc.meta, render.scan_id(sc.image)), slider, gr.update(value=None),
                *self.cleared())

    def preview_frame(self, frame, request: gr.Request = None):
        session = self.sessions.peek(_session_hash(request))
        if session is None or session.scan is None or frame is None or int(frame) <= 0:
            return gr.update(), gr.update()
        try:
            loaded = self._frame_of(session.scan, frame)
        except UserError as exc:
            log.info("frame: user error: %s", exc)
            return gr.update(), f"**Cannot show this frame:** {exc}"
        session.scan = loaded
        return _preview_html(loaded.scan), _meta_markdown(loaded.scan.meta, render.scan_id(loaded.scan.image))

    # --------------------------------------------------------------------------------- one scan
    def _hospital(self, hospital) -> int:
        if hospital is None or hospital == "":
            return int(self.pipe.hospitals[0])
        try:
            hospital = int(hospital)
        except (TypeError, ValueError):
            raise UserError(f"Hospital must be one of {self.pipe.hospitals}, got {hospital!r}.") from None
        if hospital not in self.pipe.hospitals:
            raise UserError(f"Unknown hospital {hospital}; this checkpoint has hospitals {self.pipe.hospitals}.")
        return hospital

    def _attack_args(self, attack, eps, steps, eot=1) -> tuple[str, float, int, int]:
        attack = (attack or "none").lower()
        if attack not in {v for _, v in ATTACKS}:
            raise UserError(f"Unknown attack {attack!r}; choose none, fgsm, pgd or adaptive.")
        try:
            eps = float(DEFAULT_EPS if eps is None else eps)
            steps = int(10 if steps is None else steps)
            eot = int(eot or 1)
        except (TypeError, ValueError):
            raise UserError("eps, steps and EOT must be numbers.") from None
        if not 0 <= eps <= EPS_MAX:
            raise UserError(f"eps must be between 0 and {EPS_MAX}, got {eps}.")
        lim = self.limits
        top = lim.adaptive_steps_max if attack == "adaptive" else lim.steps_max
        if not 1 <= steps <= top:
            raise UserError(f"steps must be between 1 and {top} for this attack on this server ({lim.device}), "
                            f"got {steps}.")
        if attack == "adaptive" and not 1 <= eot <= lim.eot_max:
            raise UserError(f"EOT samples must be between 1 and {lim.eot_max} on this server ({lim.device}), "
                            f"got {eot}.")
        return attack, eps, steps, max(1, eot)

    def analyze(self, scan, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                purify_always=False, seed=0, frame=0, eot=1, make_report=True, request: gr.Request = None,
                progress=gr.Progress()):
        """API: attack (optional) -> detect -> purify -> classify one uploaded scan.

        Returns (verdict, panels HTML, analysed-vs-purified pair, timings, details JSON, report files). Any problem
        is an error whose message names no file."""
        try:
            with self._request(request, progress) as (session, tracker):
                t0 = time.perf_counter()
                args = self._args(hospital, attack, eps, steps, eot)
                loaded = self._frame_of(self._read_upload(scan, keep_frames=True), frame)
                out = self._analyze(loaded, *args, defence, purify_always, seed, make_report, request, tracker, t0)
                compare = out[2].get("value") if isinstance(out[2], dict) else out[2]
                return (*out[:2], compare, *out[3:])  # the API gets the pair itself (or None), not a page update
        except UserError as exc:
            raise self._user_error(str(exc), "analyze") from None
        except Stopped as exc:
            raise self._user_error(exc.message(), "analyze") from None

    def analyze_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                   purify_always=False, seed=0, frame=0, eot=1, make_report=True, request: gr.Request = None,
                   progress=gr.Progress()):
        """The page's Analyse button: the same on the scan loaded at upload; a problem is shown in the verdict
        box (every other output stays empty) instead of raising."""
        try:
            with self._request(request, progress) as (session, tracker):
                t0 = time.perf_counter()
                args = self._args(hospital, attack, eps, steps, eot)
                if session.scan is None:
                    raise UserError("No scan is loaded: upload a scan (PNG, JPEG or DICOM) or pick an example "
                                    "first. (A file that could not be read is not loaded, and a loaded scan is "
                                    f"forgotten after {self.sessions.keep_s / 60:.0f} idle minutes.)")
                loaded = self._frame_of(session.scan, frame)
                return self._analyze(loaded, *args, defence, purify_always, seed, make_report, request, tracker, t0)
        except UserError as exc:
            log.info("analyze (page): user error: %s", exc)
            return (f"### Cannot analyse\n{exc}", *self.cleared()[1:])
        except Stopped as exc:
            log.info("analyze (page): %s", exc.message())
            return (f"### Stopped\n{exc.message()}", *self.cleared()[1:])

    def _args(self, hospital, attack, eps, steps, eot):
        return (self._hospital(hospital), *self._attack_args(attack, eps, steps, eot))

    def _analyze(self, loaded, hospital, attack, eps, steps, eot, defence, purify_always, seed, make_report,
                 request, tracker: Tracker, t0: float):
        torch = self.torch
        pipe = self.pipe
        seed = int(seed or 0)
        defence = bool(defence)
        purify = "never" if not defence else ("always" if purify_always else "flagged")
        sc = loaded.scan
        timings = {"read": (time.perf_counter() - t0) * 1000}
        try:
            x = torch.from_numpy(sc.image)[None, None].to(pipe.device)
            clean = None
            if attack != "none":
                tracker.stage("classifying the clean scan")
                t = time.perf_counter()
                clean = pipe.analyze(x, hospital=hospital, purify="never", seed=seed)[0]
                timings["classify_clean"] = (time.perf_counter() - t) * 1000
                y = torch.tensor([int(np.argmax(clean.probabilities))], device=pipe.device)
                n = 1 if attack == "fgsm" else steps
                tracker.stage(f"{'adaptive' if attack == 'adaptive' else attack.upper()} attack", n,
                              "mae" if attack == "adaptive" else "classifier")
                t = time.perf_counter()
                x = _perturb(pipe, x, y, hospital, attack, eps, steps, seed, eot)
                timings["attack"] = (time.perf_counter() - t) * 1000
            tracker.stage("detecting, purifying if needed, classifying", int(getattr(pipe, "ddim_steps", 0) or 0),
                          "unet", label="purification step")
            result = pipe.analyze(x, hospital=hospital, purify=purify, seed=seed)
        except (Stopped, UserError):
            raise
        except Exception as exc:  # noqa: BLE001 - one clear message in the page, the app keeps serving
            log.exception("analysis failed")
            raise UserError(f"The analysis failed ({type(exc).__name__}); the app keeps serving.") from None
        res = result[0]
        timings.update({k: v for k, v in res.timings_ms.items() if k != "total"})
        tracker.stage("drawing the figures")
        return self._render_one(sc, res, clean, result.device, hospital, attack, eps, steps, seed, eot, defence,
                                purify, timings, t0, bool(make_report), request)

    def _background_fraction(self, image, meta: dict) -> float | None:
        """For a background statistic: the share of the scan's own pixels (not the black bars that square it)
        that the detector looks at. Near 0, the detector cannot judge the scan, and the page says so."""
        if getattr(self.pipe, "statistic", None) not in render.BACKGROUND_STATISTICS:
            return None
        try:
            from medfedpure.detector import background_region

            region = background_region(self.torch.from_numpy(np.asarray(image))[None, None])[0, 0].numpy()
            size = region.shape[0]
            h, w = int(meta.get("height") or size), int(meta.get("width") or size)
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            top, left = (size - nh) // 2, (size - nw) // 2
            return float(region[top:top + nh, left:left + nw].mean())
        except Exception:  # noqa: BLE001 - an explanation only
            return None

    def _render_one(self, sc, res, clean, device, hospital, attack, eps, steps, seed, eot, defence, purify,
                    timings, t0, make_report, request):
        t_render = time.perf_counter()
        pipe = self.pipe
        original, analysed = sc.image, res.input
        sid = render.scan_id(original)
        attacked = attack != "none"
        stats = render.perturbation_stats(original, analysed)
        pert_img, factor = render.perturbation_image(original, analysed, scale=eps if attacked else None)
        overlay = render.error_overlay(res.input, res.error_map)
        quantiles = pipe.clean_quantiles(hospital)
        percentile = render.clean_percentile(res.score, quantiles)
        statistic = getattr(pipe, "statistic", None)
        target_fpr = (getattr(pipe, "detector_config", None) or {}).get("target_fpr")
        blank = bool(np.ptp(original) == 0)
        unknown = blank or getattr(res, "in_distribution", None) is False
        text = render.verdict(res, defence=defence, attack=attack, eps=eps, quantiles=quantiles,
                              clean_prediction=clean.prediction if clean is not None else None, statistic=statistic,
                              target_fpr=target_fpr, background_fraction=self._background_fraction(analysed, sc.meta),
                              blank=blank)
        psnr = "inf" if not np.isfinite(stats["psnr_db"]) else f"{stats['psnr_db']:.1f} dB"
        norms = f"L-inf {stats['linf']:.4f} ({stats['linf'] * 255:.1f}/255), L2 {stats['l2']:.3f}, PSNR {psnr}"
        purified = res.purified
        if purified is not None:
            pur_panel = render.Panel(f"Purified (t* = {res.t_star})", purified,
                                     "flagged, so noised and denoised" if res.flagged else
                                     "purified because 'purify always' is on")
        elif not defence:
            pur_panel = render.Panel("Purified", None, "Defence off: nothing is purified.")
        else:
            pur_panel = render.Panel("Purified", None, "Not purified: the score is under the threshold. Tick "
                                                       "'Purify always' to purify anyway.")
        stat_short = (statistic or "error").replace("_", " ")
        panels = [
            render.Panel("Original", original),
            render.Panel(f"Analysed scan ({attack} attack)", analysed, f"{norms}") if attacked else
            render.Panel("Analysed scan", None, "No attack: the original itself is analysed."),
            render.Panel(f"Perturbation, amplified x{factor:.0f}", pert_img,
                         "red: brighter, blue: darker, white: unchanged (colour scale +-eps)") if attacked else
            render.Panel("Perturbation", None, "No attack: nothing changed."),
            render.Panel("MAE reconstruction", res.reconstruction),
            render.Panel(f"Detector map ({stat_short})", overlay, "bright: what raises the detector score"),
            pur_panel,
        ]
        names = list(pipe.class_names)
        before = dict(zip(names, map(float, res.probabilities)))
        after = dict(zip(names, map(float, res.final_probabilities)))
        muted_note = ("Not meaningful: the image is blank." if blank else
                      "Not meaningful: the scan is unlike every training scan." if unknown else "")
        final_label = ("Final answer (after the defence)" if defence else
                       "Answer (defence off: the classifier's own)")
        same = " Nothing was purified, so it equals the answer before the defence." \
            if defence and purified is None else ""
        bars = render.bars_html("Classifier on the analysed scan (before the defence)", before, muted_note,
                                muted=unknown)
        bars += render.bars_html(final_label, after, muted_note or same.strip(), muted=unknown)
        type_probs = getattr(res, "tumour_type_probabilities", None)
        if type_probs and not unknown and render.is_tumour(res.final_prediction):
            bars += render.bars_html("Tumour type (the answer is tumour)", type_probs)
        svg = render.score_svg(quantiles, res.threshold, res.score, clean.score if clean is not None else None)
        page = (render.panels_html(panels) + "<div class='mfp-row'><div><div class='mfp-title'>Detector score vs this "
                f"hospital's clean scans ({render.percentile_phrase(res.score, quantiles)})</div>{svg}</div>"
                f"<div>{bars}</div></div>")
        attack_info = {"name": attack} if not attacked else {
            "name": attack, "eps": eps, "step": eps / 4, "steps": steps if attack != "fgsm" else 1, "seed": seed,
            "target": "pushes away from the classifier's prediction on the clean scan (true label unknown)",
            **({"eot": eot, "threat_model": "white-box on the whole defence"} if attack == "adaptive" else
               {"threat_model": "sees the hospital's classifier only (paper protocol)"})}
        summary = res.summary()
        summary["name"] = sid
        record = {
            "disclaimer": render.DISCLAIMER, "scan": {"id": sid, **_clean_meta(sc.meta)},
            "model": _model_record(pipe), "hospital": hospital, "class_names": names, "device": device,
            "attack": attack_info, "defence": {"on": defence, "purify": purify}, "perturbation": stats,
            "clean": None if clean is None else {**clean.summary(), "name": sid},
            "result": summary, "clean_percentile": percentile,
            "detector": {"statistic": statistic, "target_fpr": target_fpr},
            "diagnosis_shown": not unknown, "blank": blank,
            "verdict": text.replace("**", "").replace("### ", ""),
            "limits": {"time_budget_s": self.time_budget_s, "device": self.limits.device},
        }
        need_files = make_report or purified is not None
        out = self.sessions.outdir(_session_hash(request)) if need_files else None
        compare = gr.update(value=None, visible=False)
        if purified is not None:
            a, b = out / "analysed.png", out / "purified.png"
            a.write_bytes(render.png_bytes(render.gray_rgb(analysed)))
            b.write_bytes(render.png_bytes(render.gray_rgb(purified)))
            compare = gr.update(value=(str(a), str(b)), visible=True)
        timings["render"] = (time.perf_counter() - t_render) * 1000
        files = None
        if make_report:
            t_report = time.perf_counter()
            header = (f"hospital {hospital} | attack: {attack}" + (f" eps {eps:.4g}" if attacked else "")
                      + f" | defence {'on' if defence else 'off'} ({purify})"
                      + f" | model: {_model_record(pipe)['description']}")
            record["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}  # the report's own time excluded
            info = {"name": sid, "verdict": record["verdict"], "probabilities": before, "final_probabilities": after,
                    "final_label": "final answer" if defence else "answer (defence off)",
                    "type_probabilities": type_probs if (type_probs and not unknown and
                                                         render.is_tumour(res.final_prediction)) else None,
                    "score": res.score, "threshold": res.threshold, "quantiles": quantiles,
                    "clean_score": clean.score if clean is not None else None, "header": header,
                    "timings_ms": record["timings_ms"], "device": device}
            image = render.report_image(panels, info)
            files = [str(f) for f in render.write_report(out, f"medfedpure-{sid}", image, record)]
            timings["report"] = (time.perf_counter() - t_report) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        record["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
        return (text, page, compare, render.timings_markdown(record["timings_ms"], device), render.jsonable(record),
                files)

    # --------------------------------------------------------------------------------- many scans
    def _read_many(self, files) -> list[tuple[int, Loaded | None, str | None]]:
        if not files:
            raise UserError("Upload one or more scans (PNG, JPEG or DICOM files) first.")
        files = files if isinstance(files, (list, tuple)) else [files]
        if len(files) > MAX_BATCH:
            for item in files:  # still not kept on disk
                try:
                    consume_upload(_file_path(item), _upload_roots())
                except OSError:
                    pass
            raise UserError(f"At most {MAX_BATCH} files per batch, got {len(files)}.")
        items = []
        for i, item in enumerate(files, start=1):
            try:
                items.append((i, self._read_upload(item), None))
            except UserError as exc:
                items.append((i, None, str(exc)))
        return items

    def load_batch(self, files, request: gr.Request = None):
        """On upload in the Batch tab: read every file into memory, delete them, clear the upload box and the
        results. Outputs: status, the upload box, table, CSV."""
        if not files:
            return gr.update(), gr.update(), gr.update(), gr.update()
        session = self.sessions.get(_session_hash(request))
        session.batch = []
        try:
            session.batch = self._read_many(files)
        except UserError as exc:
            log.info("batch upload: user error: %s", exc)
            return f"**Cannot load these files:** {exc}", gr.update(value=None), None, None
        bad = [(i, err) for i, ld, err in session.batch if ld is None]
        good = [(i, render.scan_id(ld.image)) for i, ld, _ in session.batch if ld is not None]
        lines = [f"**{len(session.batch)} file(s) loaded** (read into memory; the files themselves were deleted): "
                 + (", ".join(f"#{i} {sid}" for i, sid in good) or "none readable")]
        lines += [f"#{i}: cannot be read: {err}" for i, err in bad]
        return "  \n".join(lines), gr.update(value=None), None, None

    def analyze_batch(self, files, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                      purify_always=False, seed=0, request: gr.Request = None, progress=gr.Progress()):
        """API: several scans (or the files of a DICOM series) -> table, CSV, status. A bad file gets an error row."""
        try:
            with self._request(request, progress) as (session, tracker):
                t0 = time.perf_counter()
                args = self._args(hospital, attack, eps, steps, 1)
                items = self._read_many(files)
                return self._batch(items, *args[:4], defence, purify_always, seed, request, tracker, t0)
        except UserError as exc:
            raise self._user_error(str(exc), "analyze_batch") from None
        except Stopped as exc:
            raise self._user_error(exc.message(), "analyze_batch") from None

    def analyze_batch_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                         purify_always=False, seed=0, request: gr.Request = None, progress=gr.Progress()):
        try:
            with self._request(request, progress) as (session, tracker):
                t0 = time.perf_counter()
                args = self._args(hospital, attack, eps, steps, 1)
                if not session.batch:
                    raise UserError("No scans are loaded: upload one or more scans first.")
                return self._batch(session.batch, *args[:4], defence, purify_always, seed, request, tracker, t0)
        except UserError as exc:
            log.info("batch (page): user error: %s", exc)
            return None, None, f"**Cannot analyse:** {exc}"
        except Stopped as exc:
            log.info("batch (page): %s", exc.message())
            return None, None, f"**{exc.message()}**"

    def _batch(self, items, hospital, attack, eps, steps, defence, purify_always, seed, request, tracker, t0):
        import pandas as pd

        torch = self.torch
        seed = int(seed or 0)
        purify = "never" if not defence else ("always" if purify_always else "flagged")
        pipe = self.pipe
        rows: list[dict | None] = [None] * len(items)
        good = []  # (position, row number, scan)
        for pos, (row, loaded, err) in enumerate(items):
            if loaded is None:
                rows[pos] = render.batch_row(row, error=err)
            else:
                good.append((pos, row, loaded.scan))
        n_chunks = (len(good) + BATCH_CHUNK - 1) // BATCH_CHUNK
        for c, start in enumerate(range(0, len(good), BATCH_CHUNK), start=1):
            chunk = good[start:start + BATCH_CHUNK]
            span = f"scans {start + 1}-{start + len(chunk)} of {len(good)}" if n_chunks > 1 else f"{len(good)} scans"
            message = None
            try:
                x = torch.from_numpy(np.stack([sc.image for _, _, sc in chunk]))[:, None].to(pipe.device)
                if attack != "none":
                    tracker.stage(f"batch, {span}: classifying the clean scans")
                    clean = pipe.analyze(x, hospital=hospital, purify="never", seed=seed)
                    y = torch.tensor([int(np.argmax(r.probabilities)) for r in clean], device=pipe.device)
                    tracker.stage(f"batch, {span}: {attack} attack", 1 if attack == "fgsm" else steps,
                                  "mae" if attack == "adaptive" else "classifier")
                    x = _perturb(pipe, x, y, hospital, attack, eps, steps, seed)
                tracker.stage(f"batch, {span}: detecting, purifying if needed, classifying",
                              int(getattr(pipe, "ddim_steps", 0) or 0), "unet", label="purification step")
                results = list(pipe.analyze(x, hospital=hospital, purify=purify, seed=seed))
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - these rows fail, the others still count
                log.error("batch chunk failed: %s", type(exc).__name__)
                results = [None] * len(chunk)
                message = f"analysis failed ({type(exc).__name__})"
            for (pos, row, sc), res in zip(chunk, results):
                frames = sc.meta.get("frames") or 1
                frame = f"{(sc.meta.get('frame') or 0) + 1} of {frames}" if frames > 1 else None
                rows[pos] = render.batch_row(row, res, frame=frame, scan=render.scan_id(sc.image),
                                             blank=bool(np.ptp(sc.image) == 0), error=message)
        csv_path = render.write_batch_csv(rows, self.sessions.outdir(_session_hash(request)) / "medfedpure-batch.csv")
        n_err = sum(1 for r in rows if str(r["status"]).startswith("error"))
        n_ok = len(rows) - n_err
        n_flag = sum(1 for r in rows if r["flagged"] is True)
        n_unknown = sum(1 for r in rows if "no diagnosis" in str(r["status"]))
        status = (f"{len(rows)} file(s): {n_ok} analysed, {n_err} error(s); {n_flag} flagged as suspicious"
                  + (f"; {n_unknown} without a diagnosis (not a brain MRI slice the model knows, or blank)"
                     if n_unknown else "")
                  + f". Hospital {hospital}, attack {attack}, defence {'on' if defence else 'off'} ({purify}); "
                  f"device {pipe.device}; {(time.perf_counter() - t0):.1f} s.")
        return pd.DataFrame(rows, columns=render.BATCH_COLUMNS), str(csv_path), status


# ------------------------------------------------------------------------------------------------ the page
def _gpu(fn, duration: int):
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _toggle_defence(on):
    """Defence off: 'purify always' means nothing, so it is unticked and locked."""
    if on:
        return gr.update(interactive=True, label="Purify always (even if not flagged)")
    return gr.update(interactive=False, value=False, label="Purify always (needs the defence on)")


def _api_inputs(hospitals, batch: bool = False) -> list:
    """Invisible inputs of the API endpoints, in the order of DemoApp.analyze / analyze_batch."""
    files = gr.File(file_count="multiple" if batch else "single", type="filepath", visible=False)
    common = [files, gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True, visible=False),
              gr.Dropdown(ATTACKS, value="none", allow_custom_value=True, visible=False),
              gr.Number(value=DEFAULT_EPS, visible=False), gr.Number(value=10, precision=0, visible=False),
              gr.Checkbox(value=True, visible=False), gr.Checkbox(value=False, visible=False),
              gr.Number(value=0, precision=0, visible=False)]
    if batch:
        return common
    return common + [gr.Number(value=0, precision=0, visible=False), gr.Number(value=1, precision=0, visible=False),
                     gr.Checkbox(value=True, visible=False)]


def build_demo(pipe, workdir: str | Path | None = None, *, time_budget_s: float | None = None,
               keep_s: float | None = None, limits: Limits | None = None) -> gr.Blocks:
    app = DemoApp(pipe, workdir, time_budget_s=time_budget_s, keep_s=keep_s, limits=limits)
    lim = app.limits
    summary, card = model_summary(pipe)
    hospitals = [(f"Hospital {h}", int(h)) for h in pipe.hospitals]
    keep_min = app.sessions.keep_s / 60
    with gr.Blocks(title="MedFedPure demo", delete_cache=(max(60, int(app.sessions.keep_s // 4)),
                                                          max(60, int(app.sessions.keep_s)))) as demo:
        gr.Markdown("# MedFedPure: brain-tumour MRI classifier with adversarial detection and purification")
        gr.HTML(f"<div class='mfp-disclaimer'>&#9888; {render.DISCLAIMER} Outputs of an experimental model "
                "must not inform any clinical decision. Do not upload scans that identify a patient.</div>")
        gr.Markdown(
            "A federated, per-hospital classifier (tumour / no tumour, and the tumour type when the model has one) is "
            "protected by a masked-autoencoder **detector** (suspicious scans are flagged) and an adaptive "
            "**diffusion purifier** (flagged scans are noised to a depth t* that grows with the score, then "
            "denoised). An out-of-distribution check, when the model has one, refuses scans unlike any training "
            "scan. Attack a scan and watch each stage. Reimplementation of Karami et al., *MedFedPure*, "
            "arXiv 2511.11625.")
        header = gr.Markdown(app.header_text(), elem_id="mfp-header")
        with gr.Accordion("Model summary", open=False):
            gr.Markdown(summary)
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
        with gr.Tab("Analyse a scan"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    scan_in = gr.File(label="Scan: PNG, JPEG or DICOM (read, then deleted at once)",
                                      file_count="single", type="filepath", elem_id="mfp-scan")
                    preview = gr.HTML(elem_id="mfp-preview")
                    scan_info = gr.Markdown(elem_id="mfp-scan-info")
                    frame = gr.Slider(0, MAX_FRAME, value=0, step=1, visible=False, elem_id="mfp-frame",
                                      label="Frame (1 = the first; 0: the default, the middle frame of a DICOM)")
                    gr.Examples(examples=[[str(EXAMPLES_DIR / f)] for f, _ in EXAMPLES], inputs=[scan_in],
                                example_labels=[lab for _, lab in EXAMPLES], label="Example scans",
                                cache_examples=False)
                    gr.Markdown("<small>Examples: Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), via "
                                "github.com/07Harjot/Brain-tumor-detection-system; the Nickparvar Brain Tumor MRI "
                                "Dataset (Kaggle) and TCGA-LGG FLAIR slices (Buda et al. 2019, TCIA). Licences not "
                                "stated by the authors (research/educational use); see assets/examples/SOURCE.md. "
                                "The models may have seen some of them in training: they demonstrate, they do not "
                                "measure.</small>")
                    hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True,
                                           label="Hospital (whose model and threshold)")
                    attack = gr.Dropdown(ATTACKS, value="none", allow_custom_value=True, label="Attack",
                                         elem_id="mfp-attack",
                                         info="FGSM/PGD see the classifier only; adaptive back-propagates through "
                                              "the whole defence (slow on a CPU)")
                    eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, label="eps (L-inf, [0,1] pixels)")
                    steps = gr.Slider(1, lim.steps_max, value=10, step=1, elem_id="mfp-steps",
                                      label=f"steps (PGD at most {lim.steps_max}, adaptive {lim.adaptive_steps_max})")
                    with gr.Row():
                        defence = gr.Checkbox(value=True, label="Defence on", elem_id="mfp-defence")
                        purify_always = gr.Checkbox(value=False, label="Purify always (even if not flagged)",
                                                    elem_id="mfp-purify-always")
                    eot = gr.Slider(1, lim.eot_max, value=1, step=1, interactive=False, elem_id="mfp-eot",
                                    label=f"EOT samples (adaptive only, at most {lim.eot_max})")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    make_report = gr.Checkbox(value=True, label="Build the PNG/PDF/JSON report (adds about 0.1 s)")
                    with gr.Row():
                        run = gr.Button("Analyse", variant="primary", elem_id="mfp-run")
                        stop = gr.Button("Stop", variant="stop", elem_id="mfp-stop")
                    limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>")
                with gr.Column(scale=2):
                    verdict = gr.Markdown(elem_classes="mfp-verdict", elem_id="mfp-verdict")
                    panels = gr.HTML(elem_id="mfp-panels")
                    compare = gr.ImageSlider(label="Analysed scan vs purified (drag the handle)", format="png",
                                             max_height=360, interactive=False, visible=False, elem_id="mfp-compare")
                    timings = gr.Markdown(elem_id="mfp-timings")
                    with gr.Accordion("All numbers (JSON)", open=False):
                        details = gr.JSON(label="details")
                    report = gr.File(label="Report: PNG, PDF and JSON (no patient identifiers)",
                                     file_count="multiple", interactive=False, elem_id="mfp-report")
            outputs = [verdict, panels, compare, timings, details, report]
            settings = [hospital, attack, eps, steps, defence, purify_always, seed, frame, eot, make_report]
            clear = run.click(app.cleared, None, outputs, queue=False, show_progress="hidden",
                              api_visibility="private")
            ui_event = clear.then(_gpu(app.analyze_ui, 120), settings, outputs, api_visibility="private",
                                  show_progress_on=[verdict], concurrency_id="analysis")
            stop.click(app.stop, None, [verdict], cancels=[ui_event], queue=False, api_visibility="private")
            # The API endpoints read hidden, unbounded inputs: a value out of range gets the app's own one-line
            # message ("steps must be between ..."), not a slider's bounds error with a traceback in the log.
            api_btn = gr.Button(visible=False)
            api_in = _api_inputs(hospitals)
            api_btn.click(_gpu(app.analyze, 120), api_in, outputs, api_name="analyze", concurrency_id="analysis")
            scan_in.change(app.inspect, [scan_in], [preview, scan_info, frame, scan_in, *outputs],
                           api_visibility="private", concurrency_limit=None, show_progress="minimal",
                           show_progress_on=[scan_info])
            frame.release(app.preview_frame, [frame], [preview, scan_info], api_visibility="private",
                          concurrency_limit=None)
            frame.release(app.cleared, None, outputs, queue=False, api_visibility="private")
            defence.change(_toggle_defence, [defence], [purify_always], queue=False, api_visibility="private")
            attack.change(lambda a: (gr.update(interactive=a == "adaptive"),
                                     gr.update(maximum=lim.adaptive_steps_max if a == "adaptive" else lim.steps_max)),
                          [attack], [eot, steps], queue=False, api_visibility="private")
        with gr.Tab("Batch"):
            gr.Markdown("Several scans, or the files of a DICOM series (one row per file, numbered in upload order "
                        "and named by a pixel hash; a multi-frame file is read at its middle frame). A file that "
                        "cannot be read gets an error row; the rest are still analysed.")
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    b_files = gr.File(label="Scans (read, then deleted at once)", file_count="multiple",
                                      type="filepath", elem_id="mfp-batch-files")
                    b_hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True,
                                             label="Hospital")
                    b_attack = gr.Dropdown(ATTACKS[:3], value="none", allow_custom_value=True, label="Attack")
                    with gr.Row():
                        b_eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, label="eps")
                        b_steps = gr.Slider(1, lim.steps_max, value=10, step=1, label="steps")
                    with gr.Row():
                        b_defence = gr.Checkbox(value=True, label="Defence on")
                        b_always = gr.Checkbox(value=False, label="Purify always")
                        b_seed = gr.Number(value=0, precision=0, label="Seed")
                    with gr.Row():
                        b_run = gr.Button("Analyse all", variant="primary", elem_id="mfp-batch-run")
                        b_stop = gr.Button("Stop", variant="stop", elem_id="mfp-batch-stop")
                    b_limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>")
                with gr.Column(scale=2):
                    b_status = gr.Markdown(elem_id="mfp-batch-status", elem_classes="mfp-verdict")
                    b_table = gr.Dataframe(headers=render.BATCH_COLUMNS, label="Results", interactive=False,
                                           wrap=True, elem_id="mfp-batch-table", column_widths=BATCH_WIDTHS)
                    b_csv = gr.File(label="CSV", interactive=False, elem_id="mfp-batch-csv")
            b_outputs = [b_table, b_csv, b_status]
            b_settings = [b_hospital, b_attack, b_eps, b_steps, b_defence, b_always, b_seed]
            b_clear = b_run.click(lambda: (None, None, ""), None, b_outputs, queue=False, show_progress="hidden",
                                  api_visibility="private")
            b_event = b_clear.then(_gpu(app.analyze_batch_ui, 300), b_settings, b_outputs, api_visibility="private",
                                   show_progress_on=[b_status], concurrency_id="analysis")
            b_stop.click(app.stop, None, [b_status], cancels=[b_event], queue=False, api_visibility="private")
            b_api = gr.Button(visible=False)
            b_api_in = _api_inputs(hospitals, batch=True)
            b_api.click(_gpu(app.analyze_batch, 300), b_api_in, b_outputs, api_name="analyze_batch",
                        concurrency_id="analysis")
            b_files.change(app.load_batch, [b_files], [b_status, b_files, b_table, b_csv], api_visibility="private",
                           concurrency_limit=None, show_progress="minimal", show_progress_on=[b_status])
            b_defence.change(_toggle_defence, [b_defence], [b_always], queue=False, api_visibility="private")
        gr.Markdown(f"<small>{render.DISCLAIMER} Uploaded files are read into memory and "
                    "deleted at once; reports and the scans held in memory are deleted when you close this page, "
                    f"after {keep_min:.0f} minutes at the latest, and when the server stops. Pages, tables, CSV "
                    "files and reports name a scan by a hash of its pixels, never by its file name or DICOM "
                    "tags.</small>")
        demo.load(app.page_info, None, [header, limits_md, b_limits_md, steps, eot, b_steps],
                  api_visibility="private", concurrency_limit=None, show_progress="hidden")
        demo.unload(app.end_session)
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
    p.add_argument("--time-budget", type=float, default=TIME_BUDGET_S, metavar="SECONDS",
                   help=f"longest one analysis may run before it is stopped (default {TIME_BUDGET_S:g}; "
                        "env MEDFEDPURE_TIME_BUDGET; 0: no limit)")
    p.add_argument("--keep-reports", type=float, default=KEEP_OUTPUTS_S, metavar="SECONDS",
                   help=f"delete report folders and idle sessions after this long (default {KEEP_OUTPUTS_S:g}; "
                        "env MEDFEDPURE_KEEP_REPORTS)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("MEDFEDPURE_THREADS", "0")),
                   help="torch threads per process (env MEDFEDPURE_THREADS; default: CPU cores / concurrent "
                        "requests, at least 1, so two requests do not fight over the cores)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Everything Gradio and the app write (uploads, copies, reports) goes into one private folder, removed on
    # SIGTERM/SIGHUP and at exit.
    private = Path(_PRIVATE_TEMP or private_temp_dir())
    os.environ["GRADIO_TEMP_DIR"] = str(private)
    demo_ref: list = []

    def cleanup():
        if demo_ref:
            demo_ref[0].app_state.sessions.close()
        remove_tree(private)

    import atexit

    atexit.register(cleanup)
    install_signal_handlers(cleanup)
    t0 = _T_START
    try:
        pipe = LazyPipeline(args.model, args.revision, loader=load_pipeline)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"error: could not load the model: {exc}", file=sys.stderr)
        return 1
    demo = build_demo(pipe, time_budget_s=args.time_budget, keep_s=args.keep_reports)
    demo_ref.append(demo)
    # Serve the page first; the models load right after (a request that needs them waits for them).
    launch(demo, args.host, args.port, args.share, prevent_thread_lock=True)
    log.info("page served %.1f s after start; loading the models", time.perf_counter() - t0)
    import torch

    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, DEFAULT_CONCURRENCY))
    torch.set_num_threads(threads)
    try:
        pipe.load()
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"error: could not load the model: {exc}", file=sys.stderr)
        demo.close()
        return 1
    log.info("MedFedPure ready %.1f s after start: %s; device %s; %d torch thread(s); time budget %g s",
             time.perf_counter() - t0, pipe.source_description, pipe.device, threads, args.time_budget)
    demo.app_state.ensure_ready()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
