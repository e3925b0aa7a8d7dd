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
    DEFAULT_EPS, EPS_MAX, AnalyzeRequest, Limits, UserError, example_copies, frame_arg, frame_of, read_many,
    read_upload, temp_root,
)
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
ATTACKS = [("none", "none"), ("FGSM", "fgsm"), ("PGD (L-inf)", "pgd"),
           ("adaptive PGD through the whole defence", "adaptive")]
MAX_FRAME = 9999  # the frame slider's API bound; the page narrows it to the file's frames
# Pixel widths of the batch table's columns (render.BATCH_COLUMNS): row, scan and status first, so an error is
# readable at 1400 px; the numbers after them scroll.
BATCH_WIDTHS = ["48px", "140px", "250px", "96px", "80px", "96px", "110px", "72px", "84px", "84px", "56px", "110px",
                "64px"]
DEFAULT_CONCURRENCY = int(os.environ.get("MEDFEDPURE_CONCURRENCY", "2"))
QUEUE_MAX_SIZE = int(os.environ.get("MEDFEDPURE_QUEUE_SIZE", "32"))
TIME_BUDGET_S = float(os.environ.get("MEDFEDPURE_TIME_BUDGET", "60"))  # per analysis; 0: no limit
KEEP_OUTPUTS_S = float(os.environ.get("MEDFEDPURE_KEEP_REPORTS", "1800"))  # report folders live at most this long


# ------------------------------------------------------------------------------------------------ the app
class DemoApp:
    """The callbacks; holds the pipeline loaded once at start and the per-session state."""

    def __init__(self, pipe, workdir: str | Path | None = None, *, time_budget_s: float | None = None,
                 keep_s: float | None = None, limits: Limits | None = None):
        self.pipe = pipe  # a MedFedPure pipeline, or a LazyPipeline still loading (python app.py)
        self._limits = limits
        self._ready = Readiness(pipe, lambda real: (app_progress.install_hooks(real), render.warm_up()))
        self.time_budget_s = TIME_BUDGET_S if time_budget_s is None else float(time_budget_s)
        # Inside Gradio's temp folder, so reports are served from where they are written (no second copy).
        self.sessions = Sessions.started(workdir, KEEP_OUTPUTS_S if keep_s is None else keep_s, root=temp_root())
        self.workdir = self.sessions.workdir
        self.requests = Requests(self.sessions, self.time_budget_s, prepare=self.ensure_ready, user_errors=(UserError,),
                                 api_error=lambda message: gr.Error(message, print_exception=False), log=log)
        self._keep = example_copies(EXAMPLES_DIR, [f for f, _ in EXAMPLES])  # Gradio's copies of our examples

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
        return render.model_header(self.pipe.source_description, self.pipe.device, self.pipe.hospitals, loading)

    def _answer(self, where: str, request, progress, work, on_error=None):
        return self.requests.run(where, _session_hash(request), progress, work, on_error)

    def _parse(self, *values, **named) -> AnalyzeRequest:
        return AnalyzeRequest.parse(self.pipe.hospitals, self.limits, *values, **named)

    def _analyze(self, loaded, req: AnalyzeRequest, request, tracker: Tracker, t0: float) -> AnalyzeOutputs:
        return analyze_scan(self.pipe, frame_of(loaded, req.frame).scan, req, tracker, t0=t0,
                            outdir=lambda: self.sessions.outdir(_session_hash(request)),
                            limits={"time_budget_s": self.time_budget_s, "device": self.limits.device})

    def _batch(self, items, req: AnalyzeRequest, request, tracker: Tracker, t0: float) -> BatchOutputs:
        csv_path = self.sessions.outdir(_session_hash(request)) / "medfedpure-batch.csv"
        return analyze_scans(self.pipe, items, req, tracker, csv_path=csv_path, t0=t0)

    def stop(self, request: gr.Request = None):
        """The Stop button: every running request of this session ends at its next model call; the results stay
        empty and the verdict box says so."""
        if self.requests.stop(_session_hash(request)):
            return "### Stopped\nYou stopped the analysis. Nothing is shown for an unfinished analysis."
        return gr.update()

    def end_session(self, request: gr.Request = None):
        """The page was closed: its scans leave memory and its report folders are deleted."""
        self.sessions.drop(_session_hash(request))

    # --------------------------------------------------------------------------------- upload preview
    def cleared(self) -> AnalyzeOutputs:
        """Every result output emptied (the first thing each new request or upload does)."""
        return AnalyzeOutputs(compare=gr.update(value=None, visible=False))

    def inspect(self, scan, request: gr.Request = None):
        """On upload or example click: read the file into memory, delete it, clear the upload box and every result,
        show a preview, the non-identifying metadata and, for multi-frame files, the frame picker.

        Outputs: preview, info, frame slider, the upload box, then the AnalyzeOutputs."""
        if scan is None:  # the upload box was just cleared (by this function): nothing changes
            return (gr.update(),) * (4 + len(AnalyzeOutputs._fields))
        hidden = gr.update(visible=False, value=0, minimum=0, maximum=MAX_FRAME)
        session = self.sessions.get(_session_hash(request))
        session.scan = None  # a new upload replaces the last scan, whatever happens next
        try:
            loaded = read_upload(scan, self._keep, keep_frames=True)
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
        return render.preview_html(sc.image), render.scan_info(sc), slider, gr.update(value=None), *self.cleared()

    def preview_frame(self, frame, request: gr.Request = None):
        session = self.sessions.peek(_session_hash(request))
        if session is None or session.scan is None or frame is None or int(frame) <= 0:
            return gr.update(), gr.update()
        try:
            loaded = frame_of(session.scan, frame_arg(frame))
        except UserError as exc:
            log.info("frame: user error: %s", exc)
            return gr.update(), f"**Cannot show this frame:** {exc}"
        session.scan = loaded
        return render.preview_html(loaded.scan.image), render.scan_info(loaded.scan)

    # --------------------------------------------------------------------------------- one scan
    def analyze(self, scan, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                purify_always=False, seed=0, frame=0, eot=1, make_report=True, request: gr.Request = None,
                progress=gr.Progress()) -> AnalyzeOutputs:
        """API: attack (optional) -> detect -> purify -> classify one uploaded scan -> AnalyzeOutputs. Any problem
        is an error whose message names no file."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, frame, eot, make_report)
            return self._analyze(read_upload(scan, self._keep, keep_frames=True), req, request, tracker, t0)
        return self._answer("analyze", request, progress, work)

    def analyze_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                   purify_always=False, seed=0, frame=0, eot=1, make_report=True, request: gr.Request = None,
                   progress=gr.Progress()) -> AnalyzeOutputs:
        """The page's Analyze button: the same on the scan loaded at upload; a problem is shown in the verdict
        box (every other output stays empty) instead of raising."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, frame, eot, make_report)
            if session.scan is None:
                raise UserError("No scan is loaded: upload a scan (PNG, JPEG or DICOM) or pick an example first. "
                                "(A file that could not be read is not loaded, and a loaded scan is forgotten "
                                f"after {self.sessions.keep_s / 60:.0f} idle minutes.)")
            out = self._analyze(session.scan, req, request, tracker, t0)
            return out._replace(compare=gr.update(value=out.compare, visible=out.compare is not None))
        return self._answer("analyze (page)", request, progress, work, lambda stopped, message: self.cleared()._replace(
            verdict=f"### {'Stopped' if stopped else 'Cannot analyze'}\n{message}"))

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

    def analyze_batch(self, files, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                      purify_always=False, seed=0, request: gr.Request = None, progress=gr.Progress()) -> BatchOutputs:
        """API: several scans (or the files of a DICOM series) -> BatchOutputs. A bad file gets an error row."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, make_report=False)
            return self._batch(read_many(files, self._keep), req, request, tracker, t0)
        return self._answer("analyze_batch", request, progress, work)

    def analyze_batch_ui(self, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10, defence=True,
                         purify_always=False, seed=0, request: gr.Request = None, progress=gr.Progress()):
        """The Batch tab's Analyze all button, on the scans loaded at upload; a problem is shown in the status."""
        def work(session, tracker, t0):
            req = self._parse(hospital, attack, eps, steps, defence, purify_always, seed, make_report=False)
            if not session.batch:
                raise UserError("No scans are loaded: upload one or more scans first.")
            return self._batch(session.batch, req, request, tracker, t0)
        return self._answer("batch (page)", request, progress, work, lambda stopped, message: BatchOutputs(
            status=f"**{message}**" if stopped else f"**Cannot analyze:** {message}"))


# ------------------------------------------------------------------------------------------------ the page
def _gpu(fn, duration: int):
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _toggle_defence(on):
    """Defence off: 'purify always' means nothing, so it is unticked and locked."""
    if on:
        return gr.update(interactive=True, label="Purify always (even if not flagged)")
    return gr.update(interactive=False, value=False, label="Purify always (needs the defence on)")


def _settings(hospitals, lim: Limits, tab: str = "") -> list:
    """The attack and defence settings of a tab, in the callbacks' order: hospital, attack, eps, steps, defence,
    purify always, seed. tab: "" for the scan tab (elements with ids, every attack), "batch-" for the Batch tab."""
    ids = (lambda name: None) if tab else (lambda name: f"mfp-{name}")
    hospital = gr.Dropdown(hospitals, value=hospitals[0][1], allow_custom_value=True,
                           label="Hospital (whose model and threshold)")
    attack = gr.Dropdown(ATTACKS[:3] if tab else ATTACKS, value="none", allow_custom_value=True, label="Attack",
                         elem_id=ids("attack"), info="FGSM/PGD see the classifier only; adaptive back-propagates "
                                                     "through the whole defence (slow on a CPU)")
    eps = gr.Slider(0, EPS_MAX, value=DEFAULT_EPS, step=0.0005, label="eps (L-inf, [0,1] pixels)")
    steps = gr.Slider(1, lim.steps_max, value=10, step=1, elem_id=ids("steps"), label=lim.steps_label)
    with gr.Row():
        defence = gr.Checkbox(value=True, label="Defence on", elem_id=ids("defence"))
        always = gr.Checkbox(value=False, label="Purify always (even if not flagged)", elem_id=ids("purify-always"))
    seed = gr.Number(value=0, precision=0, label="Seed")
    defence.change(_toggle_defence, [defence], [always], queue=False, api_visibility="private")
    return [hospital, attack, eps, steps, defence, always, seed]


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
    private = dict(queue=False, api_visibility="private")
    with gr.Blocks(title="MedFedPure demo", delete_cache=(max(60, int(app.sessions.keep_s // 4)),
                                                          max(60, int(app.sessions.keep_s)))) as demo:
        gr.Markdown("# MedFedPure: brain-tumour MRI classifier with adversarial detection and purification")
        gr.HTML(render.BANNER)
        gr.Markdown(render.PAGE_INTRO)
        header = gr.Markdown(app.header_text(), elem_id="mfp-header")
        with gr.Accordion("Model summary", open=False):
            gr.Markdown(summary)
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
        with gr.Tab("Analyze a scan"):
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
                    gr.Markdown(render.EXAMPLES_NOTE)
                    settings = _settings(hospitals, lim)
                    eot = gr.Slider(1, lim.eot_max, value=1, step=1, interactive=False, elem_id="mfp-eot",
                                    label=lim.eot_label)
                    make_report = gr.Checkbox(value=True, label="Build the PNG/PDF/JSON report (adds about 0.1 s)")
                    with gr.Row():
                        run = gr.Button("Analyze", variant="primary", elem_id="mfp-run")
                        stop = gr.Button("Stop", variant="stop", elem_id="mfp-stop")
                    limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>")
                with gr.Column(scale=2):
                    verdict = gr.Markdown(elem_classes="mfp-verdict", elem_id="mfp-verdict")
                    panels = gr.HTML(elem_id="mfp-panels")
                    compare = gr.ImageSlider(label="Analyzed scan vs purified (drag the handle)", format="png",
                                             max_height=360, interactive=False, visible=False, elem_id="mfp-compare")
                    timings = gr.Markdown(elem_id="mfp-timings")
                    with gr.Accordion("All numbers (JSON)", open=False):
                        details = gr.JSON(label="details")
                    report = gr.File(label="Report: PNG, PDF and JSON (no patient identifiers)",
                                     file_count="multiple", interactive=False, elem_id="mfp-report")
            outputs = list(AnalyzeOutputs(verdict=verdict, panels=panels, compare=compare, timings=timings,
                                          details=details, report=report))  # in the type's order, the API's
            ui_event = run.click(app.cleared, None, outputs, show_progress="hidden", **private).then(
                _gpu(app.analyze_ui, 120), [*settings, frame, eot, make_report], outputs, api_visibility="private",
                show_progress_on=[verdict], concurrency_id="analysis")
            stop.click(app.stop, None, [verdict], cancels=[ui_event], **private)
            # The API endpoints read hidden, unbounded inputs: a value out of range gets the app's own one-line
            # message ("steps must be between ..."), not a slider's bounds error with a traceback in the log.
            gr.Button(visible=False).click(_gpu(app.analyze, 120), _api_inputs(hospitals), outputs,
                                           api_name="analyze", concurrency_id="analysis")
            scan_in.change(app.inspect, [scan_in], [preview, scan_info, frame, scan_in, *outputs],
                           api_visibility="private", concurrency_limit=None, show_progress="minimal",
                           show_progress_on=[scan_info])
            frame.release(app.preview_frame, [frame], [preview, scan_info], api_visibility="private",
                          concurrency_limit=None)
            frame.release(app.cleared, None, outputs, **private)
            attack, steps = settings[1], settings[3]
            attack.change(lambda a: (gr.update(interactive=a == "adaptive"),
                                     gr.update(maximum=lim.adaptive_steps_max if a == "adaptive" else lim.steps_max)),
                          [attack], [eot, steps], **private)
        with gr.Tab("Batch"):
            gr.Markdown(render.BATCH_NOTE)
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    b_files = gr.File(label="Scans (read, then deleted at once)", file_count="multiple",
                                      type="filepath", elem_id="mfp-batch-files")
                    b_settings = _settings(hospitals, lim, "batch-")
                    with gr.Row():
                        b_run = gr.Button("Analyze all", variant="primary", elem_id="mfp-batch-run")
                        b_stop = gr.Button("Stop", variant="stop", elem_id="mfp-batch-stop")
                    b_limits_md = gr.Markdown(f"<small>{lim.text(app.time_budget_s)}</small>")
                with gr.Column(scale=2):
                    b_status = gr.Markdown(elem_id="mfp-batch-status", elem_classes="mfp-verdict")
                    b_table = gr.Dataframe(headers=render.BATCH_COLUMNS, label="Results", interactive=False,
                                           wrap=True, elem_id="mfp-batch-table", column_widths=BATCH_WIDTHS)
                    b_csv = gr.File(label="CSV", interactive=False, elem_id="mfp-batch-csv")
            b_outputs = list(BatchOutputs(table=b_table, csv=b_csv, status=b_status))
            b_event = b_run.click(lambda: BatchOutputs(), None, b_outputs, show_progress="hidden", **private).then(
                _gpu(app.analyze_batch_ui, 300), b_settings, b_outputs, api_visibility="private",
                show_progress_on=[b_status], concurrency_id="analysis")
            b_stop.click(app.stop, None, [b_status], cancels=[b_event], **private)
            gr.Button(visible=False).click(_gpu(app.analyze_batch, 300), _api_inputs(hospitals, batch=True),
                                           b_outputs, api_name="analyze_batch", concurrency_id="analysis")
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


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(EXAMPLES_DIR)],
                       max_file_size="200mb", theme=gr.themes.Soft(), css=render.PAGE_CSS, **kwargs)


def main(argv=None) -> int:
    args = parse_args(argv, description="MedFedPure demo app (Gradio). " + render.DISCLAIMER,
                      time_budget_s=TIME_BUDGET_S, keep_s=KEEP_OUTPUTS_S)
    return serve(args, lambda pipe: build_demo(pipe, time_budget_s=args.time_budget, keep_s=args.keep_reports),
                 launch, loader=load_pipeline, private=_PRIVATE_TEMP, t_start=_T_START, concurrency=DEFAULT_CONCURRENCY)


if __name__ == "__main__":
    sys.exit(main())
