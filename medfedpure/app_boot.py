"""Start the demo app fast: serve the page first, load the models right after.

Importing torch, torchvision and diffusers and loading the three models takes longer than importing gradio and
building the page. `LazyPipeline` reads what the page needs (hospitals, class names, tumour types, where the
weights come from) from the checkpoint's JSON files in milliseconds, so `python app.py` can build and serve the
page, then load the real `MedFedPure` pipeline in its main thread (`load()`). A request that needs the models
before they are loaded waits for them (`wait()`); everything else about it is unchanged. Any attribute the page
did not need is read from the real pipeline, waiting for it first.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["LazyPipeline", "device_hint"]


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class LazyPipeline:
    """A MedFedPure pipeline that is loaded after the page is served (see the module docstring)."""

    def __init__(self, model: str | None = None, revision: str | None = None, loader=None):
        from medfedpure.hub import resolve_model

        self._model, self._revision = model, revision
        self._loader = loader
        self.source = resolve_model(model, revision)  # local folders: instant; the Hub: downloads (as before)
        root = Path(self.source.path)
        clf = _read_json(root / "classifier" / "config.json")
        det = _read_json(root / "detector" / "config.json")
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
