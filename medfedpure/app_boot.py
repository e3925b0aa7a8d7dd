"""Start the demo app fast: serve the page first, load the models right after.

Importing torch, torchvision and diffusers and loading the three models takes longer than importing gradio and
building the page. `LazyPipeline` reads what the page needs (hospitals, class names, tumour types, where the
weights come from) from the checkpoint's JSON files in milliseconds, so `python app.py` can build and serve the
page, then load the real `MedFedPure` pipeline in its main thread (`load()`). A request that needs the models
before they are loaded waits for them (`wait()`); everything else about it is unchanged. Any attribute the page
did not need is read from the real pipeline, waiting for it first.

`parse_args` and `serve` are `python app.py`'s flags and its life: private temp folder, page first, models next,
clean exit on SIGTERM. Nothing here imports torch at import time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["LazyPipeline", "Readiness", "device_hint", "parse_args", "serve"]


def device_hint() -> str:
    """The device the pipeline will most likely pick (medfedpure.device.pick_device), guessed without torch:
    "cuda" when an NVIDIA device is visible, "mps" on Apple silicon, else "cpu". Only the page's first view
    uses it; the app switches to the real device once the models are loaded."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    if Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists():
        return "cuda"
    if sys.platform == "darwin" and os.uname().machine == "arm64":
        return "mps"
    return "cpu"


def _config(folder: Path, kind: str) -> dict:
    """A model's config as one flat dict, sectioned or flat file (see checkpoint_format); {} when unreadable
    (the page still comes up, and loading the pipeline reports what is wrong)."""
    from medfedpure.checkpoint_format import read_config

    try:
        return read_config(folder, kind).flat()
    except (OSError, ValueError, KeyError):
        return {}


class LazyPipeline:
    """A MedFedPure pipeline that is loaded after the page is served (see the module docstring)."""

    def __init__(self, model: str | None = None, revision: str | None = None, loader=None):
        from medfedpure.hub import resolve_model

        self._model, self._revision = model, revision
        self._loader = loader
        self.source = resolve_model(model, revision)  # local folders: instant; the Hub: downloads (as before)
        root = Path(self.source.path)
        clf = _config(root / "classifier", "classifier")
        det = _config(root / "detector", "detector")
        hospitals = clf.get("hospitals") or list((det.get("calibration") or {}).keys()) or [0]
        self.hospitals = sorted(int(h) for h in hospitals)
        self.class_names = list(clf.get("class_names") or ["no_tumour", "tumour"])
        self.tumour_types = list(clf.get("tumour_types") or []) if clf.get("num_types") else []
        self.source_description = self.source.description
        self._hint = device_hint()
        self._pipe = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.load_seconds: float | None = None

    # -------------------------------------------------------------------------------------------- loading
    def load(self):
        """Load the real pipeline (call once, from the main thread, after the page is served) -> it."""
        t = time.perf_counter()
        try:
            if self._loader is not None:
                self._pipe = self._loader(self._model, self._revision)
            else:
                from medfedpure.pipeline import MedFedPure

                self._pipe = MedFedPure.from_pretrained(self._model, revision=self._revision)
            return self._pipe
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.load_seconds = time.perf_counter() - t
            self._done.set()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def wait(self, timeout: float | None = None):
        """The real pipeline, once loaded; raises RuntimeError if loading failed or timed out."""
        if not self._done.wait(timeout):
            raise RuntimeError("the models are still loading")
        if self._pipe is None:
            raise RuntimeError(f"the models could not be loaded ({type(self._error).__name__})")
        return self._pipe

    # -------------------------------------------------------------------------------------------- forwarding
    @property
    def device(self):
        return self._pipe.device if self._pipe is not None else self._hint

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_pipe", "_done", "_error", "_hint", "_loader", "_model",
                                             "_revision"):
            raise AttributeError(name)
        return getattr(self.wait(), name)


class Readiness:
    """The real pipeline behind `pipe` (a LazyPipeline is waited for), set up once by setup(real_pipe) before the
    first request that needs it. Call it: on_wait() is called first when the models are still loading; raises
    RuntimeError when they could not be loaded or `timeout` ran out."""

    def __init__(self, pipe, setup=None):
        self.pipe, self.setup = pipe, setup or (lambda real: None)
        self.done = False
        self._lock = threading.Lock()

    def __call__(self, on_wait=None, timeout: float | None = None):
        lazy = isinstance(self.pipe, LazyPipeline)
        if self.done:
            return self.pipe.wait(0) if lazy else self.pipe
        if on_wait is not None and lazy and not self.pipe.loaded:
            on_wait()
        real = self.pipe.wait(timeout) if lazy else self.pipe
        with self._lock:
            if not self.done:
                self.setup(real)
                self.done = True
        return real


# ------------------------------------------------------------------------------------------------ serving
def parse_args(argv=None, *, description: str, time_budget_s: float, keep_s: float):
    """`python app.py`'s flags (each with its environment variable)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
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
    p.add_argument("--time-budget", type=float, default=time_budget_s, metavar="SECONDS",
                   help=f"longest one analysis may run before it is stopped (default {time_budget_s:g}; "
                        "env MEDFEDPURE_TIME_BUDGET; 0: no limit)")
    p.add_argument("--keep-reports", type=float, default=keep_s, metavar="SECONDS",
                   help=f"delete report folders and idle sessions after this long (default {keep_s:g}; "
                        "env MEDFEDPURE_KEEP_REPORTS)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("MEDFEDPURE_THREADS", "0")),
                   help="torch threads per process (env MEDFEDPURE_THREADS; default: CPU cores / concurrent "
                        "requests, at least 1, so two requests do not fight over the cores)")
    return p.parse_args(argv)


def serve(args, build_demo, launch, *, loader, private=None, t_start: float | None = None,
          concurrency: int = 1) -> int:
    """`python app.py`: everything Gradio and the app write goes into one private folder (removed on SIGTERM,
    SIGHUP and at exit); the page is served first (build_demo(pipe) on a LazyPipeline, then launch(demo, host,
    port, share, prevent_thread_lock=True)), the models load right after (a request that needs them waits), then
    it serves until stopped -> exit status."""
    import atexit
    import logging

    from medfedpure.app_files import install_signal_handlers, private_temp_dir, remove_tree

    log = logging.getLogger("medfedpure.app")
    private = Path(private or private_temp_dir())
    os.environ["GRADIO_TEMP_DIR"] = str(private)
    demo_ref: list = []

    def cleanup():
        if demo_ref:
            demo_ref[0].app_state.sessions.close()
        remove_tree(private)

    atexit.register(cleanup)
    install_signal_handlers(cleanup)
    t0 = time.perf_counter() if t_start is None else t_start
    try:
        pipe = LazyPipeline(args.model, args.revision, loader=loader)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"error: could not load the model: {exc}", file=sys.stderr)
        return 1
    demo = build_demo(pipe)
    demo_ref.append(demo)
    launch(demo, args.host, args.port, args.share, prevent_thread_lock=True)
    log.info("page served %.1f s after start; loading the models", time.perf_counter() - t0)
    import torch

    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, concurrency))
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
