"""`python -m medfedpure scan FILE...`: read scans exactly as the app and training do; report or save them.

A NIfTI volume (`.nii`, `.nii.gz`) is read as one slice: `--plane` (axial, coronal, sagittal) and `--slice N`
(from 1; default the middle of the head), shown the right way up (radiological convention; the line names the
sides). `--slice` also picks the frame of a multi-frame file; `--frame` is the same, and both count from 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Files that sit beside scans in a folder (notes, manifests) and are skipped when a folder is expanded.
# Single files named on the command line are always read, whatever their name.
SIDE_FILE_SUFFIXES = {".md", ".txt", ".tsv", ".csv", ".json"}


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from medfedpure.config import IMAGE_SIZE

    parser = subparsers.add_parser(name, help=help_text, description=(
        "Read each scan (PNG, JPEG, BMP, TIFF, WebP, DICOM or NIfTI; the format is taken from the content, not "
        "the name) with the same reader and preprocessing as the app and training, and report its metadata. "
        "A folder stands for the files directly inside it. Exit status 0 when every file was read, 2 when "
        "any could not be (the others are still processed)."))
    parser.add_argument("files", nargs="+", metavar="FILE", help="scan files or folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file (JSON lines)")
    parser.add_argument("--save-dir", type=Path, default=None, metavar="DIR",
                        help="write each preprocessed image there as an 8-bit PNG named after the file")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, metavar="N",
                        help=f"output side in pixels, aspect kept, black padding (default {IMAGE_SIZE}; "
                             "0 keeps the native size)")
    parser.add_argument("--frame", type=_from_one, default=None, metavar="K",
                        help="frame of a multi-frame file, from 1 (default: middle DICOM frame, first "
                             "TIFF/GIF frame)")
    add_volume_options(parser)
    parser.set_defaults(run=run)
    return parser


def _from_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"counts from 1, got {value}")
    return value


def _plane(text: str) -> str:
    value = str(text).strip().lower()
    if value not in ("axial", "coronal", "sagittal"):
        raise argparse.ArgumentTypeError(f"choose axial, coronal or sagittal, not {text!r}")
    return value


def add_volume_options(parser: argparse.ArgumentParser) -> None:
    """--plane and --slice, shared by `scan` and `analyze`."""
    parser.add_argument("--plane", type=_plane, default=None, metavar="PLANE",
                        help="plane of a NIfTI volume: axial (default), coronal or sagittal")
    parser.add_argument("--slice", type=_from_one, default=None, metavar="N", dest="slice_number",
                        help="slice of a NIfTI volume in that plane, from 1 (default: the middle of the head); "
                             "for a multi-frame file, its frame from 1")


def index_of(args) -> int | None:
    """The reader's frame or slice index (from 0) asked for on the command line, or None for its default."""
    if getattr(args, "slice_number", None) is not None:
        return args.slice_number - 1
    frame = getattr(args, "frame", None)
    return None if frame is None else frame - 1


def place(meta: dict) -> str:
    """"sagittal slice 45 of 90 (A left, P right, S top, I bottom; 4-D: first of 3 volumes)" or "frame 2 of 5"."""
    frames, frame = meta.get("frames") or 1, meta.get("frame") or 0
    if meta.get("plane"):
        from medfedpure.nifti import SIDE_LABELS

        sides = SIDE_LABELS.get(meta["plane"])
        text = f"{meta['plane']} slice {frame + 1} of {frames}"
        if sides:
            text += f" ({sides[0]} left, {sides[1]} right, {sides[2]} top, {sides[3]} bottom"
            text += f"; 4-D: only the first of {meta['volumes']} volumes is used)" if (meta.get("volumes") or 1) > 1 \
                else ")"
        return text
    return f"frame {frame + 1} of {frames}" if frames > 1 else ""


def expand(paths: list[str]) -> list[Path]:
    """Folders -> the files directly inside them (sorted, hidden and side files skipped); files as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith(".")
                          and c.suffix.lower() not in SIDE_FILE_SUFFIXES)
        else:
            out.append(p)  # a missing file is reported by read_scan like any other bad input
    return out


def _png_path(save_dir: Path, stem: str, taken: set[Path]) -> Path:
    """stem.png, or stem-1.png, stem-2.png, ... when that name is already used in this run or is an input."""
    candidate, k = save_dir / f"{stem}.png", 0
    while candidate.resolve() in taken:
        k += 1
        candidate = save_dir / f"{stem}-{k}.png"
    taken.add(candidate.resolve())
    return candidate


def _line(name: str, meta: dict, saved: Path | None) -> str:
    parts = [f"{name}: ok", f"{meta['format']}" + (f" {meta['mode']}" if meta["mode"] else ""),
             f"{meta['width']}x{meta['height']}"]
    where = place(meta)
    if where:
        parts.append(where)
    if meta["modality"]:
        parts.append(f"modality {meta['modality']}")
    if meta["pixel_spacing"]:
        parts.append("spacing {:.3g} x {:.3g} mm".format(*meta["pixel_spacing"]))
    if meta["window"]:
        w = meta["window"]
        values = f" (C {w['center']:.4g}, W {w['width']:.4g})" if w["center"] is not None else ""
        parts.append(f"window {w['source']}{values}")
    if meta["size"]:
        parts.append(f"-> {meta['size']}x{meta['size']}")
    if saved is not None:
        parts.append(f"saved {saved}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from medfedpure.io import META_KEYS, ScanReadError, read_scan, to_uint8

    files = expand(args.files)
    if not files:
        print("error: no files to read (the folders given are empty)", file=sys.stderr)
        return 2
    size = args.size if args.size and args.size > 0 else None
    taken = {f.resolve() for f in files}  # never overwrite an input scan with its preview
    if args.save_dir is not None:
        try:
            args.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: cannot create the folder {args.save_dir} ({exc.strerror or exc})", file=sys.stderr)
            return 2

    failed = 0
    for path in files:
        record = {"file": str(path), "name": path.name, "ok": True, "error": None}
        saved = None
        try:
            scan = read_scan(path, size=size, frame=index_of(args), plane=args.plane)
            meta = scan.meta
            if args.save_dir is not None:
                saved = _png_path(args.save_dir, path.stem, taken)
                Image.fromarray(to_uint8(scan.image)).save(saved)
        except ScanReadError as exc:
            failed += 1
            meta = dict.fromkeys(META_KEYS)
            record.update(ok=False, error=str(exc))
        except OSError as exc:  # writing the preview failed (disk full, permissions): not the scan's fault
            failed += 1
            meta, saved = scan.meta, None
            record.update(ok=False, error=f"{path.name}: could not save the preview ({exc.strerror or exc}).")
        record.update(meta)
        # frames and slices count from 1 in what people read (the reader's meta counts from 0)
        record["frame"] = meta["frame"] + 1 if meta.get("frame") is not None else None
        record["slice"] = record["frame"] if record["ok"] else None
        record["saved"] = str(saved) if saved is not None else None
        if args.json:
            print(json.dumps(record), flush=True)
        elif record["ok"]:
            print(_line(path.name, meta, saved), flush=True)
        else:
            print(f"error: {record['error']}", file=sys.stderr, flush=True)
    if not args.json and len(files) > 1:
        print(f"{len(files) - failed} of {len(files)} file(s) read", file=sys.stderr)
    return 2 if failed else 0
