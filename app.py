"""MedFedPure demo (Gradio 6): upload a brain MRI slice, attack it, watch the defence detect and purify it.

    python app.py [--model SOURCE] [--revision REV] [--host 127.0.0.1] [--port 7860] [--share]
                  [--time-budget SECONDS] [--keep-reports SECONDS] [--threads N]

SOURCE: a checkpoint folder or a Hugging Face Hub repo id "user/name" (also MEDFEDPURE_MODEL / MEDFEDPURE_REVISION);
default: the bundled `pretrained/`. This file is the page's layout and its callbacks. A request is checked once
(medfedpure.app_request), attacked and analyzed by the library's one workflow (medfedpure.attack_workflow, via
medfedpure.app_analysis) and drawn by pure functions (medfedpure.app_render); time budget, Stop and progress:
app_progress; uploads, reports and sessions: app_files (a scan is named by a hash of its pixels, never by its
file; uploads are deleted once read); fast start and `python app.py`'s life: app_boot.

API (gradio_client, see the README): "/analyze" -> AnalyzeOutputs and "/analyze_batch" -> BatchOutputs.
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

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from medfedpure import app_progress  # noqa: E402
from medfedpure import app_render as render  # noqa: E402
from medfedpure.app_boot import LazyPipeline, Readiness, parse_args, serve  # noqa: E402
from medfedpure.app_files import Sessions, session_hash as _session_hash, setup_logging  # noqa: E402
from medfedpure.app_progress import Requests, Tracker  # noqa: E402
from medfedpure.app_render import AnalyzeOutputs, BatchOutputs  # noqa: E402
from medfedpure.app_request import (  # noqa: E402
    ATTACK_LABELS, DEFAULT_EPS, EPS_MAX, PLANES, AnalyzeRequest, Limits, UserError, discard_uploads, example_copies,
    expand_slices,
    frame_arg, frame_of, hospital_names, plane_arg, read_many, read_upload, temp_root,
)
from medfedpure.app_request import _attack_name  # noqa: E402
from medfedpure.app_analysis import analyze_scan, analyze_scans  # noqa: E402
from medfedpure.model_card import pipeline_summary as model_summary  # noqa: E402

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
) if (EXAMPLES_DIR / f).is_file()]
ATTACKS = list(ATTACK_LABELS)  # (page label, the workflow's name)
MAX_FRAME = 9999  # the frame slider's API bound; the page narrows it to the file's frames
# Pixel widths of the batch table's columns (render.BATCH_COLUMNS): the table spans the page, so every header
# fits on its words at 1400 px without scrolling sideways.
BATCH_WIDTHS = ["42px", "60px", "40px", "106px", "106px", "148px", "84px", "52px", "96px", "76px", "74px", "64px",
                "86px", "76px", "80px"]
DEFAULT_CONCURRENCY = int(os.environ.get("MEDFEDPURE_CONCURRENCY", "2"))  # light and heavy analyses each
QUEUE_MAX_SIZE = int(os.environ.get("MEDFEDPURE_QUEUE_SIZE", "32"))
TIME_BUDGET_S = float(os.environ.get("MEDFEDPURE_TIME_BUDGET", "60"))  # per analysis; 0: no limit
KEEP_OUTPUTS_S = float(os.environ.get("MEDFEDPURE_KEEP_REPORTS", "1800"))  # report folders live at most this long


# ------------------------------------------------------------------------------------------------ the app
class DemoApp:
    """The callbacks; holds the pipeline loaded once at start and the per-session state."""

    def __init__(self, pipe, workdir: str | Path | None = None, *, time_budget_s: float | None = None,
                 keep_s: float | None = None, limits: Limits | None = None, concurrency: int | None = None):
        self.pipe = pipe  # a MedFedPure pipeline, or a LazyPipeline still loading (python app.py)
        self._limits = limits
        self._ready = Readiness(pipe, lambda real: (app_progress.install_hooks(real), render.warm_up()))
        self.time_budget_s = TIME_BUDGET_S if time_budget_s is None else float(time_budget_s)
        # Inside Gradio's temp folder, so reports are served from where they are written (no second copy).
        self.sessions = Sessions.started(workdir, KEEP_OUTPUTS_S if keep_s is None else keep_s, root=temp_root())
        self.workdir = self.sessions.workdir
        slots = max(1, int(concurrency or DEFAULT_CONCURRENCY))
        self.requests = Requests(self.sessions, self.time_budget_s, prepare=self.ensure_ready, user_errors=(UserError,),
                                 api_error=lambda message: gr.Error(message, print_exception=False), log=log,
                                 slots={"light": slots, "heavy": slots})
        self._keep = example_copies(EXAMPLES_DIR, [f for f, _ in EXAMPLES])  # Gradio's copies of our examples
        self.hospital_names = hospital_names(pipe)

    def ensure_ready(self, tracker: Tracker | None = None, timeout: float | None = None):
        """Wait for the models (python app.py serves the page before they are loaded); the first time, install the
        progress hooks and warm up the figures (fonts, code paths), so the first user does not pay for them."""
        try:
            self._ready(tracker and (lambda: tracker.stage("waiting for the models to finish loading")), timeout)
        except RuntimeError as exc:
            raise UserError(f"The app is not ready: {exc}. Try again in a moment.") from None

    @property
    def limits(self) -> Limits:
        """The attack limits of the device the models run on (a LazyPipeline names its real one once loaded)."""
        return self._limits or Limits.for_device(self.pipe.device)

    def page_info(self):
        """On each page load: the header and limits texts and the attack sliders for the real device (the page
        may have been built before the models were loaded, from a guess)."""
        try:
            self.ensure_ready(timeout=900)
        except UserError:
            return (gr.update(),) * 6
        lim = self.limits
        text = f"<small>{lim.text(self.time_budget_s)}</small>"
        return (self.header_text(), text, text, gr.update(maximum=lim.steps_max, label=lim.steps_label),
                gr.update(maximum=lim.eot_max, label=lim.eot_label), gr.update(maximum=lim.steps_max))

    def header_text(self) -> str:
        loading = isinstance(self.pipe, LazyPipeline) and not self.pipe.loaded
        return render.model_header(self.pipe.source_description, self.pipe.device, self.hospital_names, loading)

    def hospital_choices(self) -> list[tuple[str, int]]:
        return [(self.hospital_names.get(int(h), f"hospital {h}"), int(h)) for h in self.pipe.hospitals]

    def _answer(self, where: str, request, progress, work, on_error=None, kind: str = "light", ticket=None,
                on_refused=None):
        try:
            return self.requests.run(where, _session_hash(request), progress, work, on_error, kind=kind,
                                     ticket=ticket, on_refused=on_refused)
        finally:
            if ticket is not None:  # a page request begun by begin() has ended
                session = self.sessions.peek(_session_hash(request))
                if session is not None:
                    session.waiting = max(0, session.waiting - 1)

    def _parse(self, *values, **named) -> AnalyzeRequest:
        return AnalyzeRequest.parse(self.pipe.hospitals, self.limits, *values, names=self.hospital_names, **named)

    def _analyze(self, loaded, req: AnalyzeRequest, request, tracker: Tracker, t0: float) -> AnalyzeOutputs:
        return analyze_scan(self.pipe, frame_of(loaded, req.frame, req.plane).scan, req, tracker, t0=t0,
                            outdir=lambda: self.sessions.outdir(_session_hash(request)),
                            limits={"time_budget_s": self.time_budget_s, "device": self.limits.device},
                            hospital_name=self.hospital_names.get(req.hospital, ""))

    def _batch(self, items, req: AnalyzeRequest, request, tracker: Tracker, t0: float, plane=None,
               slices=None) -> BatchOutputs:
        csv_path = self.sessions.outdir(_session_hash(request)) / "medfedpure-batch.csv"
        return analyze_scans(self.pipe, expand_slices(items, plane_arg(plane), slices), req, tracker,
                             csv_path=csv_path, t0=t0, hospital_name=self.hospital_names.get(req.hospital, ""))

    def begin(self, request: gr.Request = None):
        """The first, instant step of Analyze / Analyze all: every result emptied, and the request's ticket (the
        session's Stop count now; a Stop pressed before the analysis starts ends it at once)."""
        session = self.sessions.get(_session_hash(request))
        session.waiting += 1
        return (*self.cleared(), session.stops)

    def begin_batch(self, request: gr.Request = None):
        session = self.sessions.get(_session_hash(request))
        session.waiting += 1
        return (*BatchOutputs(), session.stops)

    def stop(self, request: gr.Request = None):
        """The Stop button: every running request of this session ends at its next model call and answers
        "Stopped" itself (normally: no error marker; its results stay empty); one still queued ends when its turn
        comes, and the box says so now. With nothing running or queued the box is left as it is."""
        session = self.sessions.peek(_session_hash(request))
        queued = session is not None and session.waiting > len(session.cancels)
        running = self.requests.stop(_session_hash(request))
        if running or not queued:
            return gr.update()  # the running request writes its own "Stopped", after this
        return "### Stopped\nYou stopped the analysis before it started. Nothing is shown for an unfinished analysis."

    def end_session(self, request: gr.Request = None):
        """The page was closed: its scans leave memory and its report folders are deleted."""
        self.sessions.drop(_session_hash(request))

    # --------------------------------------------------------------------------------- upload preview
    def cleared(self) -> AnalyzeOutputs:
        """Every result output emptied (the first thing each new request or upload does)."""
        return AnalyzeOutputs(compare=gr.update(value=None, visible=False), report=gr.update(value=None, visible=False))

    def _loaded_outputs(self, loaded):
        """preview, info, frame slider, plane selector for a loaded scan."""
        sc = loaded.scan
        meta = sc.meta
        volume = bool(meta.get("plane"))
        slider = gr.update(visible=False, value=1, minimum=1, maximum=MAX_FRAME)
        if loaded.frames > 1:
            what = "Slice" if volume else "Frame"
            default = "the middle of the head" if volume else "the middle one"
            slider = gr.update(visible=True, minimum=1, maximum=loaded.frames, step=1,
                               value=int(meta.get("frame") or 0) + 1,
                               label=f"{what} (1 to {loaded.frames}; starts at {default})")
        plane = gr.update(visible=volume, value=meta.get("plane") or "axial")
        return (render.preview_html(sc.image, render.side_labels(meta)), render.scan_info(sc), slider, plane)

    def inspect(self, scan, request: gr.Request = None):
        """On upload or example click: read the file into memory, delete it, clear the upload box and every result,
        show a preview, the non-identifying metadata and, for multi-frame files and volumes, the frame (slice)
        picker and the plane selector.

        Outputs: preview, info, frame slider, plane selector, the upload box, then the AnalyzeOutputs."""
        if scan is None:  # the upload box was just cleared (by this function): nothing changes
            return (gr.update(),) * (5 + len(AnalyzeOutputs._fields))
        hidden = gr.update(visible=False, value=1, minimum=1, maximum=MAX_FRAME)
        session = self.sessions.get(_session_hash(request))
        session.scan = None  # a new upload replaces the last scan, whatever happens next
        try:
            loaded = read_upload(scan, self._keep, keep_frames=True)
        except UserError as exc:
            log.info("upload: user error: %s", exc)
            gr.Warning(f"Cannot read this file: {exc}")
            return (None, f"**Cannot read this file:** {exc}", hidden, gr.update(visible=False), gr.update(value=None),
                    *self.cleared())
        session.scan = loaded
        ready = self.cleared()._replace(verdict=render.ready_text(loaded.scan.meta))
        return (*self._loaded_outputs(loaded), gr.update(value=None), *ready)

    def preview_frame(self, frame, request: gr.Request = None):
        """The frame (slice) slider was moved: show that frame."""
        session = self.sessions.peek(_session_hash(request))
        if session is None or session.scan is None or frame is None:
            return gr.update(), gr.update()
        try:
            loaded = frame_of(session.scan, frame_arg(frame))
        except UserError as exc:
            log.info("frame: user error: %s", exc)
            return gr.update(), f"**Cannot show this frame:** {exc}"
        session.scan = loaded
        return (render.preview_html(loaded.scan.image, render.side_labels(loaded.scan.meta)),
                render.scan_info(loaded.scan))

    def preview_plane(self, plane, request: gr.Request = None):
        """The plane selector changed: the volume's middle slice in that plane. Outputs: preview, info, slider."""
        session = self.sessions.peek(_session_hash(request))
        if session is None or session.scan is None or not session.scan.scan.meta.get("plane"):
            return gr.update(), gr.update(), gr.update()
        try:
            loaded = frame_of(session.scan, None, plane_arg(plane))
        except UserError as exc:
            log.info("plane: user error: %s", exc)
            return gr.update(), f"**Cannot show this plane:** {exc}", gr.update()
        session.scan = loaded
        return self._loaded_outputs(loaded)[:3]

    # --------------------------------------------------------------------------------- one scan
    def analyze(self, scan, hospital=None, attack="none", eps=DEFAULT_EPS, steps=None, defence=True,
                purify_always=False, seed=0, frame=0, eot=1, make_report=True, plane=None,
                request: gr.Request = None, progress=gr.Progress()) -> AnalyzeOutputs:
        """API: attack (optional) -> detect -> purify -> classify one uploaded scan (for a NIfTI volume: one slice
        of `plane`, `frame` counting from 1) -> AnalyzeOutputs. Any problem is an error whose message names no
        file."""
        def work(session, tracker, t0):
            try:
                req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, frame, eot,
                                  make_report, plane)
            except UserError:
                discard_uploads(scan, self._keep)  # refused before it was read: its file goes all the same
                raise
            loaded = read_upload(scan, self._keep, keep_frames=True, plane=req.plane)
            return self._analyze(loaded, req, request, tracker, t0)
        return self._answer("analyze", request, progress, work, kind=_kind(attack),
                            on_refused=lambda: discard_uploads(scan, self._keep))

    def analyze_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=None, defence=True,
                   purify_always=False, seed=0, frame=0, eot=1, make_report=True, plane=None, ticket=None,
                   request: gr.Request = None, progress=gr.Progress()) -> AnalyzeOutputs:
        """The page's Analyze button: the same on the scan loaded at upload; a problem (or Stop) is shown in the
        verdict box (every other output stays empty) instead of raising."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, frame, eot, make_report,
                              plane)
            if session.scan is None:
                raise UserError("No scan is loaded: upload a scan (PNG, JPEG, DICOM or NIfTI) or pick an example "
                                "first. (A file that could not be read is not loaded, and a loaded scan is "
                                f"forgotten after {self.sessions.keep_s / 60:.0f} idle minutes.)")
            out = self._analyze(session.scan, req, request, tracker, t0)
            return out._replace(compare=gr.update(value=out.compare, visible=out.compare is not None),
                                report=gr.update(value=out.report, visible=out.report is not None))
        return self._answer("analyze (page)", request, progress, work, lambda stopped, message: self.cleared()._replace(
            verdict=f"### {'Stopped' if stopped else 'Cannot analyze'}\n{message}"), kind=_kind(attack), ticket=ticket)

    # --------------------------------------------------------------------------------- many scans
    def load_batch(self, files, request: gr.Request = None):
        """On upload in the Batch tab: read every file into memory, delete them, clear the upload box and the
        results. Outputs: status, the upload box, table, CSV."""
        if not files:
            return gr.update(), gr.update(), gr.update(), gr.update()
        session = self.sessions.get(_session_hash(request))
        session.batch = []
        try:
            session.batch = read_many(files, self._keep)
        except UserError as exc:
            log.info("batch upload: user error: %s", exc)
            return f"**Cannot load these files:** {exc}", gr.update(value=None), None, None
        return render.batch_loaded(session.batch), gr.update(value=None), None, None

    def analyze_batch(self, files, hospital=None, attack="none", eps=DEFAULT_EPS, steps=None, defence=True,
                      purify_always=False, seed=0, plane=None, slices=None, request: gr.Request = None,
                      progress=gr.Progress()) -> BatchOutputs:
        """API: several scans (or the files of a DICOM series, or NIfTI volumes: one row per slice asked for in
        `slices`, e.g. "40, 45" or "30-60/5", of `plane`) -> BatchOutputs. A bad file gets an error row."""
        def work(session, tracker, t0):
            try:
                req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, make_report=False)
            except UserError:
                discard_uploads(files or [], self._keep)
                raise
            return self._batch(read_many(files, self._keep), req, request, tracker, t0, plane, slices)
        return self._answer("analyze_batch", request, progress, work, kind="heavy",
                            on_refused=lambda: discard_uploads(files or [], self._keep))

    def analyze_batch_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=None, defence=True,
                         purify_always=False, seed=0, plane=None, slices=None, ticket=None,
                         request: gr.Request = None, progress=gr.Progress()):
        """The Batch tab's Analyze all button, on the scans loaded at upload; a problem is shown in the status."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, make_report=False)
            if not session.batch:
                raise UserError("No scans are loaded: upload one or more scans first.")
            return self._batch(session.batch, req, request, tracker, t0, plane, slices)
        return self._answer("batch (page)", request, progress, work, lambda stopped, message: BatchOutputs(
            status=f"**{message}**" if stopped else f"**Cannot analyze:** {message}"), kind="heavy", ticket=ticket)


def _kind(attack) -> str:
    """The kind of work a request is: the adaptive attack is heavy (its own slots, a lower CPU priority)."""
    return "heavy" if _attack_name(attack) == "adaptive" else "light"


# ------------------------------------------------------------------------------------------------ the page
def _gpu(fn, duration: int):
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _upload_box(**kwargs) -> gr.File:
    """A gr.File input (type filepath) that leaves nothing behind: Gradio's own one opens an empty
    NamedTemporaryFile in its temp folder for every file it hands over and never removes it (hundreds of
    zero-byte tmpXXXX files after a few batches); this one hands over the path alone."""
    from gradio.utils import NamedString

    box = gr.File(type="filepath", **kwargs)
    plain = box._process_single_file

    def process(f):
        if box.type == "filepath" and not box.file_types:
            return NamedString(f.path)
        return plain(f)

    box._process_single_file = process
    return box


def _toggle_defence(on):
    """Defence off: 'purify always' means nothing, so it is unticked and locked."""
    if on:
        return gr.update(interactive=True, label="Purify always (even if the scan does not look attacked)")
    return gr.update(interactive=False, value=False, label="Purify always (needs the defence on)")


def _settings(hospitals, lim: Limits, tab: str = "", buttons: tuple = ("Analyze", "run")) -> list:
    """The attack and defence settings of a tab, in the callbacks' order: hospital, attack, eps, steps, defence,
    purify always, seed (the scan tab adds EOT and the report), then the run and Stop buttons. tab: "" for the
    scan tab (every attack), "batch-" for the Batch tab. The buttons come before the rarely changed settings,
    which sit in a closed "More settings" fold, so that they are in view at 1280 x 800."""
    ids = (lambda name: f"mfp-{tab}{name}")
    hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=False, elem_id=ids("hospital"),
                           label="Hospital (whose model and detector threshold)")
    attack = gr.Radio(ATTACKS[:3] if tab else ATTACKS, value="none", label="Attack the scan first?",
                      elem_id=ids("attack"), info="FGSM and PGD see the classifier only; the adaptive attack also "
                                                  "attacks the detector and the purifier")
    defence = gr.Checkbox(value=True, label="Defence on (detect, then purify what looks attacked)",
                          elem_id=ids("defence"))
    with gr.Row():
        run = gr.Button(buttons[0], variant="primary", elem_id=ids(buttons[1]))
        stop = gr.Button("Stop", variant="stop", elem_id=ids("stop"))
    with gr.Accordion("More settings", open=False, elem_id=ids("more")):
        eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, elem_id=ids("eps"),
                        label="Attack strength: largest change of a pixel (0 to 1; 8/255 = 0.0314)")
        steps = gr.Slider(1, lim.steps_max, value=10, step=1, elem_id=ids("steps"), label=lim.steps_label)
        always = gr.Checkbox(value=False, label="Purify always (even if the scan does not look attacked)",
                             elem_id=ids("purify-always"))
        seed = gr.Number(value=0, precision=0, label="Seed (the same seed gives the same attack and noise)",
                         elem_id=ids("seed"))
        extra = [] if tab else [
            gr.Slider(1, lim.eot_max, value=1, step=1, interactive=False, elem_id="mfp-eot", label=lim.eot_label),
            gr.Checkbox(value=True, label="Build the PNG/PDF/JSON report (adds about 0.1 s)", elem_id="mfp-make-report")]
    defence.change(_toggle_defence, [defence], [always], queue=False, api_visibility="private")
    return [hospital, attack, eps, steps, defence, always, seed, *extra, run, stop]


def _api_inputs(hospitals, batch: bool = False) -> list:
    """Invisible inputs of the API endpoints, in the order of DemoApp.analyze / analyze_batch."""
    files = _upload_box(file_count="multiple" if batch else "single", visible=False)
    common = [files, gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True, visible=False),
              gr.Dropdown(ATTACKS, value="none", allow_custom_value=True, visible=False),
              gr.Number(value=DEFAULT_EPS, visible=False), gr.Number(value=None, precision=0, visible=False),
              gr.Checkbox(value=True, visible=False), gr.Checkbox(value=False, visible=False),
              gr.Number(value=0, precision=0, visible=False)]
    if batch:
        return common + [gr.Textbox(value="", visible=False), gr.Textbox(value="", visible=False)]
    return common + [gr.Number(value=0, precision=0, visible=False), gr.Number(value=1, precision=0, visible=False),
                     gr.Checkbox(value=True, visible=False), gr.Textbox(value="", visible=False)]


def _attack_changed(lim: Limits):
    def changed(attack):
        adaptive = _attack_name(attack) == "adaptive"
        return (gr.update(interactive=adaptive, value=1),
                gr.update(maximum=lim.adaptive_steps_max if adaptive else lim.steps_max,
                          value=lim.default_steps("adaptive" if adaptive else "pgd")))
    return changed


def build_demo(pipe, workdir: str | Path | None = None, *, time_budget_s: float | None = None,
               keep_s: float | None = None, limits: Limits | None = None) -> gr.Blocks:
    app = DemoApp(pipe, workdir, time_budget_s=time_budget_s, keep_s=keep_s, limits=limits)
    lim = app.limits
    summary, card = model_summary(pipe)
    hospitals = app.hospital_choices()
    private = dict(queue=False, api_visibility="private")
    busy = dict(concurrency_id="analysis", concurrency_limit=8 * max(1, DEFAULT_CONCURRENCY))
    with gr.Blocks(title="MedFedPure demo", delete_cache=(max(60, int(app.sessions.keep_s // 4)),
                                                          max(60, int(app.sessions.keep_s)))) as demo:
        gr.HTML(render.TOP_HTML)
        header = gr.Markdown(app.header_text(), elem_id="mfp-header")
        with gr.Accordion("About this demo, the model and its card", open=False, elem_id="mfp-about"):
            gr.Markdown(render.PAGE_INTRO)
            gr.Markdown(summary)
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
        with gr.Tab("Analyze a scan"):
            with gr.Row(equal_height=False, elem_id="mfp-scan-row"):
                with gr.Column(scale=4, min_width=280, elem_id="mfp-col-scan"):
                    gr.Markdown("**1. Pick an example or upload a scan**", elem_classes="mfp-step")
                    scan_in = _upload_box(label="Scan: PNG, JPEG, DICOM or NIfTI (read, then deleted at once)",
                                          file_count="single", elem_id="mfp-scan", height=150)
                    preview = gr.HTML(elem_id="mfp-preview")
                    scan_info = gr.Markdown(elem_id="mfp-scan-info")
                    plane = gr.Radio(list(PLANES), value="axial", label="Plane of the volume", visible=False,
                                     elem_id="mfp-plane")
                    frame = gr.Slider(1, MAX_FRAME, value=1, step=1, visible=False, elem_id="mfp-frame",
                                      label="Frame (1 = the first)")
                    gr.Examples(examples=[[str(EXAMPLES_DIR / f)] for f, _ in EXAMPLES], inputs=[scan_in],
                                example_labels=[lab for _, lab in EXAMPLES], label="Example scans",
                                cache_examples=False, elem_id="mfp-examples")
                with gr.Column(scale=4, min_width=260, elem_id="mfp-col-settings"):
                    gr.Markdown("**2. Choose the settings, then analyze**", elem_classes="mfp-step")
                    *settings, run, stop = _settings(hospitals, lim)
                    limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>", elem_id="mfp-limits")
                with gr.Column(scale=6, min_width=300, elem_id="mfp-col-answer"):
                    gr.Markdown("**3. The answer**", elem_classes="mfp-step")
                    verdict = gr.Markdown(render.START_TEXT, elem_classes="mfp-verdict", elem_id="mfp-verdict")
                    probabilities = gr.HTML(elem_id="mfp-probabilities")
                    timings = gr.Markdown(elem_id="mfp-timings")
                    report = gr.File(label="Report: PNG, PDF and JSON (no patient identifiers)",
                                     file_count="multiple", interactive=False, elem_id="mfp-report",
                                     visible=False)
            panels = gr.HTML(elem_id="mfp-panels")
            compare = gr.ImageSlider(label="Analyzed scan vs purified (drag the handle)", format="png",
                                     max_height=360, interactive=False, visible=False, elem_id="mfp-compare")
            with gr.Accordion("All numbers (JSON)", open=False):
                details = gr.JSON(label="details")
            outputs = list(AnalyzeOutputs(verdict=verdict, panels=panels, compare=compare, timings=timings,
                                          details=details, report=report, probabilities=probabilities))
            ticket = gr.State(0)
            hospital, attack, eps, steps, defence, always, seed, eot, make_report = settings
            ui_inputs = [hospital, attack, eps, steps, defence, always, seed, frame, eot, make_report, plane, ticket]
            run.click(app.begin, None, [*outputs, ticket], show_progress="hidden", js=render.SHOW_ANSWER_JS,
                      **private).then(
                _gpu(app.analyze_ui, 120), ui_inputs, outputs, api_visibility="private",
                show_progress_on=[verdict], **busy)
            stop.click(app.stop, None, [verdict], **private)
            # The API endpoints read hidden, unbounded inputs: a value out of range gets the app's own one-line
            # message ("steps must be between ..."), not a slider's bounds error with a traceback in the log.
            gr.Button(visible=False).click(_gpu(app.analyze, 120), _api_inputs(hospitals), outputs,
                                           api_name="analyze", **busy)
            scan_in.change(app.inspect, [scan_in], [preview, scan_info, frame, plane, scan_in, *outputs],
                           api_visibility="private", concurrency_limit=None, show_progress="minimal",
                           show_progress_on=[scan_info])
            frame.release(app.preview_frame, [frame], [preview, scan_info], api_visibility="private",
                          concurrency_limit=None)
            frame.release(app.cleared, None, outputs, **private)
            plane.input(app.preview_plane, [plane], [preview, scan_info, frame], api_visibility="private",
                        concurrency_limit=None)
            plane.input(app.cleared, None, outputs, **private)
            attack.change(_attack_changed(lim), [attack], [eot, steps], **private)
        with gr.Tab("Batch"):
            gr.Markdown(render.BATCH_NOTE)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    b_files = _upload_box(label="Scans (read, then deleted at once)", file_count="multiple",
                                          elem_id="mfp-batch-files", height=150)
                    b_plane = gr.Radio(list(PLANES), value="axial", label="Plane (NIfTI volumes)",
                                       elem_id="mfp-batch-plane")
                    b_slices = gr.Textbox(value="", label="Slices or frames (volumes and multi-frame files)",
                                          placeholder="middle", elem_id="mfp-batch-slices",
                                          info="empty: the middle one; 40, 45, 50; 30-60; 30-60/5 (every 5th); all")
                with gr.Column(scale=1, min_width=280):
                    *b_settings, b_run, b_stop = _settings(hospitals, lim, "batch-", ("Analyze all", "run"))
                    b_limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>")
                with gr.Column(scale=1, min_width=280):
                    b_status = gr.Markdown(render.BATCH_START, elem_id="mfp-batch-status",
                                           elem_classes="mfp-verdict")
                    b_csv = gr.File(label="CSV (the table without the pictures)", interactive=False,
                                    elem_id="mfp-batch-csv")
            b_table = gr.Dataframe(headers=render.BATCH_COLUMNS, label="Results (one row per file, or per slice of "
                                   "a volume)", interactive=False, wrap=True, elem_id="mfp-batch-table",
                                   column_widths=BATCH_WIDTHS, datatype=render.BATCH_TYPES)
            b_outputs = list(BatchOutputs(table=b_table, csv=b_csv, status=b_status))
            b_ticket = gr.State(0)
            b_run.click(app.begin_batch, None, [*b_outputs, b_ticket], show_progress="hidden", **private).then(
                _gpu(app.analyze_batch_ui, 300), [*b_settings, b_plane, b_slices, b_ticket], b_outputs,
                api_visibility="private", show_progress_on=[b_status], **busy)
            b_stop.click(app.stop, None, [b_status], **private)
            gr.Button(visible=False).click(_gpu(app.analyze_batch, 300), _api_inputs(hospitals, batch=True),
                                           b_outputs, api_name="analyze_batch", **busy)
            b_files.change(app.load_batch, [b_files], [b_status, b_files, b_table, b_csv], api_visibility="private",
                           concurrency_limit=None, show_progress="minimal", show_progress_on=[b_status])
        gr.Markdown(render.privacy_note(app.sessions.keep_s / 60))
        demo.load(app.page_info, None, [header, limits_md, b_limits_md, steps, eot, b_settings[3]],
                  api_visibility="private", concurrency_limit=None, show_progress="hidden")
        demo.unload(app.end_session)
    demo.app_state = app  # for tests and benchmarks
    return demo


def load_pipeline(model: str | None = None, revision: str | None = None):
    from medfedpure.pipeline import MedFedPure

    return MedFedPure.from_pretrained(model, revision=revision)


def page_theme() -> gr.themes.Base:
    """Gradio's Soft theme with text colours of at least 4.5:1 contrast: its indigo one step darker where it is
    text or behind white text (labels, tabs, buttons, the chosen radio option) and its grey help texts darker."""
    c = gr.themes.colors
    indigo = gr.themes.Color(c50=c.indigo.c50, c100=c.indigo.c100, c200=c.indigo.c200, c300=c.indigo.c300,
                             c400=c.indigo.c400, c500=c.indigo.c700, c600=c.indigo.c800, c700=c.indigo.c800,
                             c800=c.indigo.c900, c900=c.indigo.c900, c950=c.indigo.c950, name="indigo-dark")
    return gr.themes.Soft(primary_hue=indigo).set(body_text_color_subdued="*neutral_600",
                                                   block_info_text_color="*neutral_600")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(EXAMPLES_DIR)],
                       max_file_size="200mb", theme=page_theme(), css=render.PAGE_CSS, js=render.PAGE_JS, **kwargs)


def main(argv=None) -> int:
    args = parse_args(argv, description="MedFedPure demo app (Gradio). " + render.DISCLAIMER,
                      time_budget_s=TIME_BUDGET_S, keep_s=KEEP_OUTPUTS_S)
    return serve(args, lambda pipe: build_demo(pipe, time_budget_s=args.time_budget, keep_s=args.keep_reports),
                 launch, loader=load_pipeline, private=_PRIVATE_TEMP, t_start=_T_START, concurrency=DEFAULT_CONCURRENCY)


if __name__ == "__main__":
    sys.exit(main())
