"""What one request to the demo app asks for, checked once, and the scans it sends, read once.

- `AnalyzeRequest.parse` turns the page's or the API's raw values (strings, floats, None) into one checked request:
  the hospital, the attack (`medfedpure.attack_workflow.AttackSpec`), the defence, the frame, the report. Every
  problem is a `UserError` in plain words; the hardware's `Limits` (attack steps and EOT samples that fit in the
  time budget) are checked there too.
- `read_upload` / `read_many` / `frame_of` read uploads into memory (`app_files.Loaded`) and delete them at once;
  the reader is only ever given the neutral name "scan", so its messages never carry the file's own name.

Imports neither gradio nor torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medfedpure import app_render as render
from medfedpure.app_files import Loaded, consume_upload
from medfedpure.attack_workflow import AttackSpec
from medfedpure.io import ScanReadError, dicom_frame_count, read_scan

__all__ = ["DEFAULT_EPS", "EPS_MAX", "MAX_BATCH", "AnalyzeRequest", "Limits", "UserError", "example_copies",
           "frame_arg", "frame_of", "read_many", "read_upload", "temp_root"]

DEFAULT_EPS = round(8 / 255, 4)
EPS_MAX = 0.1
MAX_BATCH = 64
SCAN_NAME = "scan"  # the only name the reader is ever given
SCAN_SIZE = 128
KEEP_FRAMES_BYTES = 256 * 2**20  # a multi-frame file up to this size stays in memory so another frame can be shown


class UserError(Exception):
    """A problem with what the user sent: shown in plain words, logged as one line without a traceback."""


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

    @property
    def steps_label(self) -> str:
        return f"steps (PGD at most {self.steps_max}, adaptive {self.adaptive_steps_max})"

    @property
    def eot_label(self) -> str:
        return f"EOT samples (adaptive only, at most {self.eot_max})"

    def check(self, spec: AttackSpec) -> None:
        top = self.adaptive_steps_max if spec.name == "adaptive" else self.steps_max
        if not 1 <= spec.steps <= top:
            raise UserError(f"steps must be between 1 and {top} for this attack on this server ({self.device}), "
                            f"got {spec.steps}.")
        if spec.eot > self.eot_max:
            raise UserError(f"EOT samples must be between 1 and {self.eot_max} on this server ({self.device}), "
                            f"got {spec.eot}.")


def frame_arg(frame) -> int | None:
    """The page and the API count frames from 1 (as "frame 3 of 5" does); 0 or -1: the reader's default -> the
    reader's frame index (from 0) or None."""
    if frame is None or frame == "":
        return None
    try:
        frame = int(frame)
    except (TypeError, ValueError):
        raise UserError(f"frame must be a whole number (1 = the first frame), got {frame!r}.") from None
    return None if frame <= 0 else frame - 1


def _hospital(value, hospitals: list[int]) -> int:
    if value is None or value == "":
        return int(hospitals[0])
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UserError(f"Hospital must be one of {hospitals}, got {value!r}.") from None
    if value not in hospitals:
        raise UserError(f"Unknown hospital {value}; this checkpoint has hospitals {hospitals}.")
    return value


@dataclass(frozen=True)
class AnalyzeRequest:
    """One checked request: whose model, which attack, defence on or off, which frame, a report or not."""

    hospital: int
    attack: AttackSpec
    defence: bool = True
    purify_always: bool = False
    frame: int | None = None  # from 0; None: the reader's default (a DICOM's middle frame)
    make_report: bool = True

    @property
    def purify(self) -> str:
        """The pipeline's purify mode: never (defence off), always, or flagged scans only."""
        return "never" if not self.defence else ("always" if self.purify_always else "flagged")

    @property
    def seed(self) -> int:
        """The attack's and the purifier's seed."""
        return self.attack.seed

    @classmethod
    def parse(cls, hospitals, limits: Limits, hospital=None, attack="none", eps=DEFAULT_EPS, steps=10,
              defence=True, purify_always=False, seed=0, frame=0, eot=1, make_report=True) -> "AnalyzeRequest":
        """The page's or the API's raw values -> a request; raises UserError with the first problem."""
        hospital = _hospital(hospital, list(hospitals))
        try:
            eps_value = float(DEFAULT_EPS if eps is None else eps)
        except (TypeError, ValueError):
            raise UserError(f"eps must be a number, got {eps!r}.") from None
        if not 0 <= eps_value <= EPS_MAX:
            raise UserError(f"eps must be between 0 and {EPS_MAX}, got {eps_value}.")
        try:
            spec = AttackSpec(attack, eps_value, steps, seed or 0, eot)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        limits.check(spec)
        return cls(hospital, spec, bool(defence), bool(purify_always), frame_arg(frame), bool(make_report))


# ------------------------------------------------------------------------------------------------ reading
def temp_root() -> Path:
    """GRADIO_TEMP_DIR when set (Gradio's own rule), else the system temp folder's gradio/."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _upload_roots() -> list[Path]:
    roots = [temp_root()]
    try:
        from gradio.utils import get_upload_folder

        roots.append(Path(get_upload_folder()))
    except Exception:  # noqa: BLE001
        pass
    return roots


def example_copies(folder: Path, names):
    """A predicate (path, bytes) -> whether the upload is Gradio's cached copy of one of the app's example scans
    (same name and bytes): not user data, and Gradio serves the same copy again on the next click of that example,
    so it is left in place."""
    digests = {}
    for name in names:
        try:
            digests[name] = hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()
        except OSError:
            pass

    def is_copy(path, data: bytes) -> bool:
        digest = digests.get(Path(path).name)
        return digest is not None and hashlib.sha256(data).hexdigest() == digest

    return is_copy


def _file_path(item) -> str:
    return str(getattr(item, "name", None) or getattr(item, "path", None) or item)


def read_upload(item, keep=None, frame: int | None = None, keep_frames: bool = False) -> Loaded:
    """Read an uploaded file into memory, delete it (unless keep(path, data)), decode one frame -> Loaded."""
    if item is None:
        raise UserError("Upload a scan (PNG, JPEG or DICOM) or pick an example first.")
    try:
        data = consume_upload(_file_path(item), _upload_roots(), keep=keep)
    except OSError:
        raise UserError("The uploaded file could not be read; upload it again.") from None
    try:
        frames = dicom_frame_count(data)
        sc = read_scan(data, size=SCAN_SIZE, frame=frame, name=SCAN_NAME)
    except ScanReadError as exc:
        raise UserError(render.user_message(exc, SCAN_NAME)) from None
    keep_bytes = keep_frames and frames > 1 and len(data) <= KEEP_FRAMES_BYTES
    return Loaded(sc, frames=frames, data=data if keep_bytes else None)


def frame_of(loaded: Loaded, want: int | None) -> Loaded:
    """The scan at frame `want` (from 0; None: as loaded), read again from the bytes kept in memory."""
    if want is None or want == loaded.scan.meta.get("frame") or (loaded.frames <= 1 and want == 0):
        return loaded
    if loaded.data is None:
        if loaded.frames <= 1:
            raise UserError(f"Frame {want + 1} does not exist: the file has only frame 1.")
        raise UserError("This file is too large to switch frames; analyzing its default frame only.")
    try:
        sc = read_scan(loaded.data, size=SCAN_SIZE, frame=want, name=SCAN_NAME)
    except ScanReadError as exc:
        raise UserError(render.user_message(exc, SCAN_NAME).replace(f"frame {want}", f"frame {want + 1}")
                        .replace("frames 0 to", "frames 1 to").replace("only frame 0", "only frame 1")) from None
    return Loaded(sc, frames=loaded.frames, data=loaded.data)


def read_many(files, keep=None) -> list[tuple[int, Loaded | None, str | None]]:
    """Several uploads -> (row from 1, Loaded or None, error or None) each; a bad file does not stop the others."""
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
            items.append((i, read_upload(item, keep), None))
        except UserError as exc:
            items.append((i, None, str(exc)))
    return items
