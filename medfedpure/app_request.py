"""What one request to the demo app asks for, checked once, and the scans it sends, read once.

- `AnalyzeRequest.parse` turns the page's or the API's raw values (strings, floats, None) into one checked request:
  the hospital, the attack (`medfedpure.attack_workflow.AttackSpec`), the defence, the frame, the report. Every
  problem is a `UserError` in plain words; the hardware's `Limits` (attack steps and EOT samples that fit in the
  time budget) are checked there too.
- `read_upload` / `read_many` / `frame_of` read uploads into memory (`app_files.Loaded`) and delete them at once;
  the reader is only ever given the neutral name "scan", so its messages never carry the file's own name. A
  NIfTI volume (`.nii`, `.nii.gz`) is read like a multi-frame file whose frames are the slices of a plane
  (axial, coronal or sagittal); `slice_list` reads the Batch tab's "which slices" text.
- `hospital_names`: what the page calls each hospital ("simulated hospital 1", "TCGA site DU").

Frames and slices count from 1 on the page, in the API, in messages and in every JSON the app writes; the
reader counts from 0 and the conversion happens here only (`frame_arg`, `frame_of`).

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
from medfedpure.io import ScanReadError, read_scan

__all__ = ["ATTACK_LABELS", "DEFAULT_EPS", "EPS_MAX", "MAX_BATCH", "PLANES", "AnalyzeRequest", "Limits", "UserError",
           "discard_uploads", "example_copies", "frame_arg", "frame_of", "hospital_names", "read_many", "read_upload", "slice_list",
           "temp_root"]

DEFAULT_EPS = round(8 / 255, 4)
EPS_MAX = 0.1
MAX_BATCH = 64
MAX_BATCH_ROWS = 256  # files x slices in one batch
PLANES = ("axial", "coronal", "sagittal")  # medfedpure.nifti.PLANES, without importing nibabel for the page
# The attack dropdown's labels (page, API) -> the workflow's names; a typed label or name is accepted.
ATTACK_LABELS = (("No attack", "none"), ("FGSM (one step)", "fgsm"), ("PGD (several small steps)", "pgd"),
                 ("Adaptive (attacks the defence too; slow)", "adaptive"))
SCAN_NAME = "scan"  # the only name the reader is ever given
SCAN_SIZE = 128
KEEP_FRAMES_BYTES = 256 * 2**20  # a multi-frame file up to this size stays in memory so another frame can be shown


class UserError(Exception):
    """A problem with what the user sent: shown in plain words, logged as one line without a traceback."""


@dataclass(frozen=True)
class Limits:
    """What the attack settings may ask for on this hardware, so that a request fits in the time budget.

    The adaptive attack back-propagates through the whole defence once per step and noise sample (EOT), so its
    cost is steps x EOT samples: `adaptive_work_max` bounds that product, `adaptive_steps` is its default."""

    device: str
    steps_max: int
    adaptive_steps_max: int
    eot_max: int
    adaptive_work_max: int = 0  # steps x EOT samples; 0: adaptive_steps_max x eot_max
    adaptive_steps: int = 10  # the adaptive attack's default number of steps
    adaptive_step_s: float | None = None  # measured seconds per adaptive step and noise sample, stated on the page

    @classmethod
    def for_device(cls, device) -> "Limits":
        kind = str(device).split(":")[0]
        if kind == "cuda":
            return cls("GPU", steps_max=50, adaptive_steps_max=50, eot_max=8, adaptive_work_max=200,
                       adaptive_steps=10)
        # 2-core CPU, one torch thread per request, bundled model: PGD costs ~30 ms a step; the adaptive attack
        # 1.6-1.9 s per step and noise sample alone, up to twice that with two at once on a busy machine. 8
        # step-samples fit twice in a 60 s budget with room to spare; the default (4) in half of that.
        return cls("CPU" if kind == "cpu" else kind.upper(), steps_max=20, adaptive_steps_max=8, eot_max=2,
                   adaptive_work_max=8, adaptive_steps=4, adaptive_step_s=2.0)

    @property
    def work_max(self) -> int:
        return self.adaptive_work_max or self.adaptive_steps_max * self.eot_max

    def text(self, budget_s: float) -> str:
        budget = f"each analysis stops after {budget_s:.0f} s" if budget_s > 0 else "no time limit per analysis"
        cost = f" (about {self.adaptive_step_s:g} s each here)" if self.adaptive_step_s else ""
        return (f"This server runs on a **{self.device}**: {budget}; at most {self.steps_max} attack steps; the "
                f"adaptive attack at most {self.adaptive_steps_max} steps and {self.work_max} steps x noise "
                f"samples in all{cost}, {self.adaptive_steps} steps by default. Light analyses never wait for "
                "adaptive ones or batches: they have slots of their own.")

    @property
    def steps_label(self) -> str:
        return f"Attack steps (PGD at most {self.steps_max}, adaptive {self.adaptive_steps_max})"

    @property
    def eot_label(self) -> str:
        return f"Noise samples per step (adaptive only; at most {self.eot_max})"

    def default_steps(self, attack: str) -> int:
        return self.adaptive_steps if attack == "adaptive" else 10

    def check(self, spec: AttackSpec) -> None:
        top = self.adaptive_steps_max if spec.name == "adaptive" else self.steps_max
        if not 1 <= spec.steps <= top:
            raise UserError(f"steps must be between 1 and {top} for this attack on this server ({self.device}), "
                            f"got {spec.steps}.")
        if spec.eot > self.eot_max:
            raise UserError(f"EOT samples must be between 1 and {self.eot_max} on this server ({self.device}), got "
                            f"{spec.eot} (noise samples per adaptive step).")
        if spec.name == "adaptive" and spec.steps * spec.eot > self.work_max:
            raise UserError(f"steps x noise samples must be at most {self.work_max} for the adaptive attack on this "
                            f"server ({self.device}), got {spec.steps} x {spec.eot}; it would not finish in time.")


def frame_arg(frame) -> int | None:
    """The page and the API count frames (and a volume's slices) from 1, as "frame 3 of 5" does; 0, None or "":
    the reader's default -> the reader's index (from 0) or None. Anything else is refused in words."""
    if frame is None or frame == "":
        return None
    try:
        value = float(frame)
        if value != int(value):
            raise ValueError
        value = int(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"frame must be a whole number (1 = the first frame; 0: the default), got {frame!r}.") \
            from None
    if value < 0:
        raise UserError(f"frame must be 1 or more (1 = the first frame; 0: the default), got {value}.")
    return None if value == 0 else value - 1


def plane_arg(plane) -> str | None:
    """A volume's plane as typed (any case, or empty for the default, axial) -> its name or None."""
    if plane is None or str(plane).strip() == "":
        return None
    name = str(plane).strip().lower()
    if name not in PLANES:
        raise UserError(f"Unknown plane {plane!r}: choose axial, coronal or sagittal.")
    return name


def hospital_names(pipe) -> dict[int, str]:
    """Hospital id -> what the page calls it: "simulated hospital 1" (ids from 0, names from 1), "TCGA site DU"
    for a real site, read from the checkpoint's split.json; "hospital N" when it does not say."""
    import json

    hospitals = [int(h) for h in getattr(pipe, "hospitals", []) or []]
    sites: dict[int, str] = {}
    simulated = None
    try:
        root = Path(str(pipe.source.path))
        split = json.loads((root / "split.json").read_text(encoding="utf-8"))
        for key, h in (split.get("sites") or {}).items():
            source, _, site = str(key).partition(":")
            sites[int(h)] = f"{source.split('_')[0].upper()} site {site}" if site else str(key)
        simulated = split.get("partition_hospitals")
    except Exception:  # noqa: BLE001 - no split file: plain numbers
        pass
    names = {}
    for h in hospitals:
        if h in sites:
            names[h] = sites[h]
        elif simulated is not None or sites:
            names[h] = f"simulated hospital {h + 1}"
        else:
            names[h] = f"hospital {h}"
    return names


def _hospital(value, hospitals: list[int], names: dict | None = None) -> int:
    """A hospital id, or its name as the page shows it (any case)."""
    names = names or {}
    if value is None or value == "":
        return int(hospitals[0])
    by_name = {str(n).strip().lower(): h for h, n in names.items()}
    if isinstance(value, str) and value.strip().lower() in by_name:
        return int(by_name[value.strip().lower()])
    try:
        value = int(value)
    except (TypeError, ValueError):
        listed = ", ".join(f"{names.get(h, h)}" for h in hospitals)
        raise UserError(f"Unknown hospital {value!r}: choose one of {listed}.") from None
    if value not in hospitals:
        named = f" ({', '.join(f'{h}: {names[h]}' for h in hospitals if h in names)})" if names else ""
        raise UserError(f"Unknown hospital {value}; this checkpoint has hospitals {hospitals}{named}.")
    return value


def _attack_name(value) -> str:
    """The attack dropdown's label or the workflow's name, any case -> the workflow's name (unknown: as given)."""
    text = "none" if value is None or value == "" else str(value).strip()
    for label, name in ATTACK_LABELS:
        if text.lower() in (label.lower(), name):
            return name
    return text


@dataclass(frozen=True)
class AnalyzeRequest:
    """One checked request: whose model, which attack, defence on or off, which frame, a report or not."""

    hospital: int
    attack: AttackSpec
    defence: bool = True
    purify_always: bool = False
    frame: int | None = None  # from 0; None: the reader's default (a DICOM's middle frame)
    make_report: bool = True
    plane: str | None = None  # a NIfTI volume's plane; None: as loaded (axial for a new upload)

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
              defence=True, purify_always=False, seed=0, frame=0, eot=1, make_report=True, plane=None, *,
              names: dict | None = None) -> "AnalyzeRequest":
        """The page's or the API's raw values -> a request; raises UserError with the first problem. names:
        the hospitals' page names (accepted like their ids)."""
        hospital = _hospital(hospital, list(hospitals), names)
        try:
            eps_value = float(DEFAULT_EPS if eps is None else eps)
        except (TypeError, ValueError):
            raise UserError(f"eps must be a number, got {eps!r}.") from None
        if not 0 <= eps_value <= EPS_MAX:
            raise UserError(f"eps must be between 0 and {EPS_MAX}, got {eps_value}.")
        name = _attack_name(attack)
        if steps is None or steps == "":
            steps = limits.default_steps(name)
        try:
            spec = AttackSpec(name, eps_value, steps, seed or 0, eot)
        except ValueError as exc:
            message = str(exc)
            if message.startswith("Unknown attack"):
                message = message.split(";")[0] + "; choose " + ", ".join(lab for lab, _ in ATTACK_LABELS) + "."
            raise UserError(message) from None
        limits.check(spec)
        return cls(hospital, spec, bool(defence), bool(purify_always), frame_arg(frame), bool(make_report),
                   plane_arg(plane))


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


def read_upload(item, keep=None, frame: int | None = None, keep_frames: bool = False,
                plane: str | None = None) -> Loaded:
    """Read an uploaded file into memory, delete it (unless keep(path, data)), decode one frame (or one slice of
    a volume in `plane`) -> Loaded."""
    if item is None:
        raise UserError("Upload a scan (PNG, JPEG, DICOM or NIfTI) or pick an example first.")
    try:
        data = consume_upload(_file_path(item), _upload_roots(), keep=keep)
    except OSError:
        raise UserError("The uploaded file could not be read; upload it again.") from None
    try:
        sc = read_scan(data, size=SCAN_SIZE, frame=frame, name=SCAN_NAME, plane=plane)
    except ScanReadError as exc:
        raise UserError(render.user_message(exc, SCAN_NAME)) from None
    frames = int(sc.meta.get("frames") or 1)
    keep_bytes = keep_frames and frames > 1 and len(data) <= KEEP_FRAMES_BYTES
    return Loaded(sc, frames=frames, data=data if keep_bytes else None)


def discard_uploads(items, keep=None) -> None:
    """Delete uploads that will not be read (the request was refused before its files were): none stays on disk."""
    items = items if isinstance(items, (list, tuple)) else [items]
    for item in items:
        if item is None:
            continue
        try:
            consume_upload(_file_path(item), _upload_roots(), keep=keep)
        except OSError:
            pass


def _volume(loaded: Loaded) -> bool:
    return loaded.scan.meta.get("plane") is not None


def frame_of(loaded: Loaded, want: int | None, plane: str | None = None) -> Loaded:
    """The scan at frame `want` (from 0; None: as loaded, or a volume's middle slice in a new plane), read again
    from the bytes kept in memory. A frame outside the file is refused with its range, counted from 1."""
    meta = loaded.scan.meta
    volume = _volume(loaded)
    plane = plane if volume and plane and plane != meta.get("plane") else None
    if plane is None:
        if want is None or want == meta.get("frame") or (loaded.frames <= 1 and want == 0):
            return loaded
        what = "Slice" if volume else "Frame"
        if want >= loaded.frames:
            if loaded.frames <= 1:
                raise UserError(f"{what} {want + 1} does not exist: the file has only {what.lower()} 1.")
            where = f" in the {meta.get('plane')} plane" if volume else ""
            raise UserError(f"{what} {want + 1} does not exist{where}: the file has {loaded.frames} "
                            f"{what.lower()}s (1 to {loaded.frames}).")
    if loaded.data is None:
        raise UserError("This file is too large to switch frames; analyzing its default frame only.")
    try:
        sc = read_scan(loaded.data, size=SCAN_SIZE, frame=want, name=SCAN_NAME,
                       plane=plane or meta.get("plane"))
    except ScanReadError as exc:  # a slice outside the new plane (the reader's message counts from 1)
        raise UserError(render.user_message(exc, SCAN_NAME)) from None
    return Loaded(sc, frames=int(sc.meta.get("frames") or 1), data=loaded.data)


def slice_list(text, frames: int) -> list[int | None]:
    """The Batch tab's "which slices" text for a file of `frames` frames or slices -> indices from 0 (None: the
    default, the middle). "" or "middle": [None]; "all"; "40, 45, 50"; "30-60"; "30-60/5" (every 5th)."""
    spec = "" if text is None else str(text).strip().lower()
    if spec in ("", "middle", "default", "0"):
        return [None]
    if spec == "all":
        return list(range(frames))
    out: list[int] = []
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        every = 1
        if "/" in part:
            part, _, step = part.partition("/")
            every = _whole(step, text)
        if "-" in part:
            lo, _, hi = part.partition("-")
            first, last = _whole(lo, text), _whole(hi, text)
        else:
            first = last = _whole(part, text)
        if first < 1 or last < first or every < 1:
            raise UserError(f"Slices: {part.strip()!r} is not a range from 1 (write e.g. 40, 45 or 30-60/5).")
        if last > frames:
            raise UserError(f"Slice {last} does not exist: the file has {frames} slices (1 to {frames}).")
        out += range(first - 1, last, every)
    if not out:
        return [None]
    return sorted(set(out))


def _whole(text: str, spec) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise UserError(f"Slices must be whole numbers from 1, ranges like 30-60 or 30-60/5, 'middle' or 'all'; "
                        f"got {spec!r}.") from None


def read_many(files, keep=None) -> list[tuple[int, Loaded | None, str | None]]:
    """Several uploads -> (file number from 1, Loaded or None, error or None) each; a bad file does not stop the
    others. Multi-frame files and volumes keep their bytes, so that more frames or slices can be read."""
    if not files:
        raise UserError("Upload one or more scans (PNG, JPEG, DICOM or NIfTI files) first.")
    files = files if isinstance(files, (list, tuple)) else [files]
    if len(files) > MAX_BATCH:
        discard_uploads(files)  # still not kept on disk
        raise UserError(f"At most {MAX_BATCH} files per batch, got {len(files)}.")
    items = []
    for i, item in enumerate(files, start=1):
        try:
            items.append((i, read_upload(item, keep, keep_frames=True), None))
        except UserError as exc:
            items.append((i, None, str(exc)))
    return items


def expand_slices(items, plane: str | None = None, slices: str | None = None):
    """Batch items (file number, Loaded or None, error) -> one item per requested slice of a volume (or frame of
    a multi-frame file): (file number, Loaded or None, error) each, in file order. A file without that slice
    gets an error row; `slices` applies to volumes and multi-frame files only."""
    out = []
    for number, loaded, err in items:
        if loaded is None:
            out.append((number, None, err))
            continue
        try:
            if plane and _volume(loaded):
                loaded = frame_of(loaded, None, plane)
            wanted = slice_list(slices, loaded.frames) if loaded.frames > 1 else [None]
        except UserError as exc:
            out.append((number, None, str(exc)))
            continue
        for want in wanted:
            try:
                out.append((number, frame_of(loaded, want), None))
            except UserError as exc:
                out.append((number, None, str(exc)))
    if len(out) > MAX_BATCH_ROWS:
        raise UserError(f"At most {MAX_BATCH_ROWS} slices per batch, got {len(out)}: ask for fewer slices.")
    return out
