"""Read one scan (PNG, JPEG, BMP, TIFF, WebP, GIF, DICOM, or a slice of a NIfTI volume) into the models' input format.

This is the ONE reader used by the app, the CLI and training, so a scan is preprocessed the same way
everywhere: `read_scan(source, size=128)` -> grayscale float32 in [0, 1], aspect kept, centred on black.

- The format is detected from the file's content (DICOM 'DICM' marker, Pillow's signature check), never from
  its name: Br35H itself holds PNG files named `.jpg`.
- Every problem with the input raises `ScanReadError` whose message names the file (basename only) and says
  what is wrong in plain words, so callers handle a single exception type.
- `Scan.meta` holds technical, non-identifying metadata only. DICOM patient, study, institution and UID
  elements are never copied out of the dataset.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ScanReadError", "Scan", "read_scan", "fit_to_square", "to_uint8", "dicom_frame_count", "META_KEYS"]

# Keys of Scan.meta, always present (None when unknown). Nothing here can identify a patient.
META_KEYS = ("format", "mode", "width", "height", "frames", "frame", "modality", "pixel_spacing",
             "slice_thickness", "bits_stored", "window", "size", "colour_fraction", "plane",
             "volumes")  # fmt: skip
# A pixel is "in colour" when its red, green and blue differ by more than this (of 1.0). MR slices are
# grayscale; the most colourful training or validation file (a Br35H export with a red caption bar) has 4.7% of
# its pixels in colour, the colour photograph of reports/ood.md 51%.
COLOUR_SPREAD = 32 / 255
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

MIN_SIDE = 16  # smaller than this is not a scan (icons, 1x1 tracking pixels)
MAX_ASPECT = 20.0  # longer side / shorter side
# Raster formats Pillow may open (its JPEG opener also returns multi-picture "MPO" files). Restricting them
# keeps risky decoders (EPS runs Ghostscript) out of reach of uploaded files.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "JPEG2000")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, the weights Pillow's convert("L") uses


class ScanReadError(ValueError):
    """Bad input. str(exc) names the file (basename only) and says what is wrong in plain words."""


@dataclass
class Scan:
    image: np.ndarray  # float32, (size, size) in [0, 1]; native (H, W) when size=None
    meta: dict  # non-identifying metadata only, see read_scan
    name: str  # display name: the file's basename or the `name` argument

    def __repr__(self) -> str:  # the default repr would print the whole array
        shape = "x".join(map(str, self.image.shape))
        return f"Scan(name={self.name!r}, image=float32[{shape}], meta={self.meta!r})"


# ---------------------------------------------------------------------------------------------------------
# public helpers


def fit_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D float image so its longer side is `size`, centred on a black square (never stretched).

    Pillow's resize widens the bilinear kernel when shrinking, so the result is antialiased.
    """
    return _fit(image, size)


def _fit(image: np.ndarray, size: int, shape: tuple[int, int] | None = None, box=None) -> np.ndarray:
    """fit_to_square; `shape` (H, W) is the original size and `box` the region of `image` that covers it
    when the image was decoded at reduced scale (JPEG draft), so the result matches a full-size decode."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    h, w = shape or image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != image.shape or box is not None:
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR, box=box))
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = image
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (values outside [0, 1] are clipped)."""
    return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def read_scan(
    source,
    size: int | None = 128,
    frame: int | None = None,
    name: str | None = None,
    max_pixels: int = 60_000_000,
    colour: bool = True,
    plane: str | None = None,
    slice_index: int | None = None,
) -> Scan:
    """Read a scan from a path, raw bytes or a binary file object.

    size: output side in pixels (aspect kept, zero padding); None keeps the native H x W.
    frame: which frame of a multi-frame file (default: the first for TIFF/GIF, the middle one for DICOM).
    meta keys (None when unknown): format, mode, width, height (upright original pixels), frames, frame,
    modality, pixel_spacing, slice_thickness, bits_stored, window (DICOM: center, width, source, ...), size,
    colour_fraction (share of pixels in colour; the out-of-distribution check reads it). colour=False skips
    measuring it, and the second small decode a colour JPEG needs for it (colour_fraction None for raster
    files): data sets read for training.
    NIfTI volumes: plane (axial, coronal, sagittal; default axial) and slice_index (from 0; `frame` when not
    given; default the middle of the head) choose the slice; meta frames = slices in that plane, frame = the
    slice, plane, volumes (the file's 4th dimension: only the first volume is read) and window (the volume's
    own percentiles).
    """
    f, name = _open(source, name)
    try:
        kind, obj = _identify(f, name, stop_before_pixels=False)
        box = None
        if kind == "dicom":
            image, meta = _dicom_image(obj, name, frame, max_pixels)
        elif kind == "nifti":
            image, meta = _nifti_image(f, name, plane, frame if slice_index is None else slice_index)
        else:
            image, meta, box = _raster_image(obj, name, size, frame, max_pixels, colour)
        if kind == "raster" and meta["colour_fraction"] is None and colour:
            meta["colour_fraction"] = _raster_colour_fraction(f)  # a JPEG decoded straight to luma
        if size is not None:
            image = _fit(image, size, shape=(meta["height"], meta["width"]), box=box)
        image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
        meta["size"] = size
        return Scan(image=image, meta=meta, name=name)
    except ScanReadError:
        raise
    except MemoryError:
        raise ScanReadError(f"{name}: the image is too large to load into memory.") from None
    except Exception as exc:  # noqa: BLE001 - callers handle one exception type
        # The library's own text is left out on purpose: it may quote a full path or DICOM element values.
        raise ScanReadError(f"{name}: the file could not be read as a scan ({type(exc).__name__}).") from exc
    finally:
        f.close()


def dicom_frame_count(source) -> int:
    """Number of frames in a scan (DICOM NumberOfFrames, or the frames of a TIFF/GIF; 1 for most files)."""
    f, name = _open(source, None)
    try:
        kind, obj = _identify(f, name, stop_before_pixels=True)
        if kind == "dicom":
            return _dicom_frames(obj)
        return int(getattr(obj, "n_frames", 1))
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(f"{name}: the file could not be read as a scan ({type(exc).__name__}).") from exc
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------------------
# opening and format detection


def _open(source, name: str | None):
    """-> (our own seekable binary file, to be closed by the caller; display name)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or path.name or "scan"
        if path.is_dir():
            raise ScanReadError(f"{name}: this is a folder, not a scan file.")
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ScanReadError(f"{name}: file not found.") from None
        except PermissionError:
            raise ScanReadError(f"{name}: permission denied; the file cannot be opened.") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ScanReadError(f"{name}: the file cannot be opened ({reason}).") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        f, name = io.BytesIO(bytes(source)), name or "scan"
    elif hasattr(source, "read"):
        raw_name = getattr(source, "name", None)
        name = name or (Path(raw_name).name if isinstance(raw_name, (str, os.PathLike)) else "") or "scan"
        # Copy into memory: the caller keeps ownership of its stream (position, closing), and
        # non-seekable streams (uploads, pipes) work too.
        f = io.BytesIO(source.read())
    else:
        raise TypeError(f"read_scan needs a path, bytes or a binary file object, not {type(source).__name__}")
    name = Path(name).name or "scan"  # never show a directory, even when the caller passes one in `name`
    f.seek(0, io.SEEK_END)
    empty = f.tell() == 0
    f.seek(0)
    if empty:
        f.close()
        raise ScanReadError(f"{name}: the file is empty (0 bytes).")
    return f, name


def _identify(f, name: str, stop_before_pixels: bool):
    """-> ("dicom", pydicom Dataset) or ("raster", lazily opened PIL image)."""
    head = f.read(1024)
    f.seek(0)
    if head[128:132] == b"DICM":
        return "dicom", _dcmread(f, name, force=False, stop_before_pixels=stop_before_pixels)
    from medfedpure.nifti import is_nifti

    if is_nifti(head):
        return "nifti", None
    try:
        return "raster", Image.open(f, formats=RASTER_FORMATS)
    except UnidentifiedImageError:
        pass
    except Image.DecompressionBombError:
        raise ScanReadError(f"{name}: the image is too large (too many pixels) to be a scan.") from None
    except Exception as exc:  # a recognised signature with a broken header
        raise ScanReadError(f"{name}: the image file is truncated or damaged and cannot be decoded.") from exc
    # DICOM written without the 128-byte preamble: accept only if it parses into a dataset with pixel data,
    # otherwise any file would "succeed" as an empty dataset.
    f.seek(0)
    try:
        ds = _dcmread(f, name, force=True, stop_before_pixels=False)
        if any(t in ds for t in _PIXEL_TAGS) and "Rows" in ds and "Columns" in ds:
            return "dicom", ds
    except Exception:  # noqa: BLE001 - not DICOM either
        pass
    raise ScanReadError(
        f"{name}: this is not an image file that can be read (expected PNG, JPEG, BMP, TIFF, WebP, DICOM or NIfTI)."
    )


def _dcmread(f, name: str, force: bool, stop_before_pixels: bool):
    import pydicom

    try:
        ds = pydicom.dcmread(f, force=force, stop_before_pixels=stop_before_pixels)
    except Exception as exc:
        if force:
            raise
        raise ScanReadError(f"{name}: the DICOM file is truncated or damaged and cannot be read.") from exc
    if not ds.file_meta.get("TransferSyntaxUID"):
        # Preamble-less files have no file meta; decoders need the transfer syntax the parser found.
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _check_dims(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ScanReadError(
            f"{name}: the image is too large ({width} x {height} = {width * height:,} pixels); "
            f"the limit is {max_pixels:,} pixels."
        )
    if min(width, height) < MIN_SIDE:
        raise ScanReadError(
            f"{name}: the image is too small ({width} x {height} pixels) to be a scan; "
            f"each side must be at least {MIN_SIDE} pixels."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ScanReadError(
            f"{name}: the image shape is implausible for a scan ({width} x {height} pixels, "
            f"one side more than {MAX_ASPECT:g} times the other)."
        )


def _check_frame(name: str, frame: int, frames: int) -> None:
    if not 0 <= frame < frames:  # `frame` counts from 0 here; people count frames from 1
        valid = "only frame 1" if frames == 1 else f"frames 1 to {frames}"
        raise ScanReadError(f"{name}: frame {frame + 1} does not exist; the file has {frames} frame(s) ({valid}).")


def _not_finite(name: str) -> ScanReadError:
    return ScanReadError(f"{name}: the image contains invalid pixel values (not-a-number or infinite).")


# ---------------------------------------------------------------------------------------------------------
# NIfTI volumes (medfedpure.nifti)


@functools.lru_cache(maxsize=2)
def _volume(data: bytes):
    """Decoded volumes, kept for the next slice: a data set reads many slices of one volume in a row."""
    from medfedpure.nifti import read_volume

    return read_volume(data)


def _nifti_image(f, name: str, plane: str | None, index: int | None):
    from medfedpure.nifti import WINDOW_PERCENTILES, NiftiError, slice_image

    plane = plane or "axial"
    try:
        volume = _volume(f.read())
        if index is None:
            index = volume.middle(plane)
        image = slice_image(volume, plane, int(index))
        frames = volume.slices(plane)
    except NiftiError as exc:
        raise ScanReadError(f"{name}: {exc}.") from None
    h, w = image.shape
    lo, hi = volume.window if volume.window is not None else (None, None)
    window = {"center": None if lo is None else (lo + hi) / 2, "width": None if lo is None else hi - lo,
              "source": "the volume's {:g}th to {:g}th percentile".format(*WINDOW_PERCENTILES)}
    meta = _meta(format="NIfTI", width=w, height=h, frames=frames, frame=int(index), plane=str(plane).lower(),
                 pixel_spacing=[round(min(volume.zooms), 4)] * 2, colour_fraction=0.0, modality="MR",
                 window=window, volumes=volume.volumes)
    return image, meta


# ---------------------------------------------------------------------------------------------------------
# raster images (Pillow)


def _raster_image(im: Image.Image, name: str, size: int | None, frame: int | None, max_pixels: int,
                  colour: bool = True):
    fmt, frames = im.format, int(getattr(im, "n_frames", 1))
    width, height = im.size
    _check_dims(name, width, height, max_pixels)  # before decoding anything: header only so far
    index = 0 if frame is None else frame
    _check_frame(name, index, frames)
    try:
        if index:
            im.seek(index)
        mode = im.mode  # before draft() may switch the decoder to luma
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: report the upright size
            width, height = height, width
        box = None
        if size is not None and fmt in ("JPEG", "MPO") and orientation == 1:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale and straight to luma (faster on large scans).
            # Asking for >= 2 * size keeps a real antialiased resize afterwards: on Br35H the result differs
            # from a full-size decode by < 1/255 on average (< 0.07 at any pixel). The reduced image is
            # rounded up to whole pixels; `box` is the part of it covering the original, so the geometry
            # is identical to a full-size decode.
            drafted = im.draft("L", (2 * size, 2 * size))
            box = drafted[1] if drafted and im.size != (width, height) else None
        im.load()
    except Image.DecompressionBombError:
        raise ScanReadError(f"{name}: the image is too large (too many pixels) to be a scan.") from None
    except Exception as exc:  # Pillow reports truncation as OSError, broken PNG chunks as SyntaxError, ...
        raise ScanReadError(f"{name}: the image file is truncated or damaged and cannot be decoded.") from exc
    ImageOps.exif_transpose(im, in_place=True)
    if not colour:
        share = None
    elif mode in GRAYSCALE_MODES:
        share = 0.0
    elif im.mode in GRAYSCALE_MODES:  # libjpeg gave luma only: read_scan measures colour from a small decode
        share = None
    else:
        share = _picture_colour_fraction(im)
    image = _gray(im, name)
    meta = _meta(format=fmt, mode=mode, width=width, height=height, frames=frames, frame=index,
                 colour_fraction=share)
    return image, meta, box


def colour_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose channels differ by more than COLOUR_SPREAD; rgb (H, W, 3) scaled to [0, 1],
    read on a grid of at most about 64 x 64 pixels (a share, not a detail)."""
    step = max(1, max(rgb.shape[:2]) // 64)
    r, g, b = (rgb[::step, ::step, c].astype(np.float32) for c in range(3))  # channel-wise: fast reductions
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return float((spread > COLOUR_SPREAD).mean())


def _picture_colour_fraction(im: Image.Image) -> float:
    """Colour share of a decoded picture, on a nearest-neighbour thumbnail: a share, not a detail."""
    small = im.resize((min(64, im.width), min(64, im.height)), Image.Resampling.NEAREST)
    return colour_fraction(np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0)


def _raster_colour_fraction(f) -> float | None:
    """A colour JPEG's colour share from a second decode at reduced scale (libjpeg decoded the scan itself
    straight to luma, which must stay exactly as it was); None when it cannot be measured (the scan is still
    read)."""
    try:
        f.seek(0)
        with Image.open(f) as im:
            im.draft("RGB", (64, 64))  # orientation does not change a share: no EXIF transpose
            return _picture_colour_fraction(im)
    except Exception:  # the colour share is advice: never fail a scan that decoded
        return None


def _gray(im: Image.Image, name: str) -> np.ndarray:
    """PIL image in any mode -> 2-D float32 in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16"):  # 16-bit grayscale: the type's full range, not this image's min/max
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":  # 32-bit int; in practice 16-bit data (older Pillow opens 16-bit PNG as "I")
        a = np.asarray(im).astype(np.float64)
        return (a / 65535.0 if a.min() >= 0 and a.max() <= 65535 else _minmax(a)).astype(np.float32)
    if mode == "F":  # float has no fixed range: keep data already in [0, 1], stretch anything else
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise _not_finite(name)
        return (a if a.min() >= 0 and a.max() <= 1 else _minmax(a)).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:  # composite on black: transparent background = no signal
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0  # RGB, L, P, 1, CMYK, YCbCr, ...


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _meta(**known) -> dict:
    return {k: known.get(k) for k in META_KEYS}


# ---------------------------------------------------------------------------------------------------------
# DICOM (pydicom 3)


def _dicom_frames(ds) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _dicom_image(ds, name: str, frame: int | None, max_pixels: int):
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

    if not any(t in ds for t in _PIXEL_TAGS):
        raise ScanReadError(
            f"{name}: this is a DICOM file without image data (for example a report or structured document)."
        )
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    _check_dims(name, cols, rows, max_pixels)
    frames = _dicom_frames(ds)
    index = frames // 2 if frame is None else frame  # middle slice of a multi-frame series by default
    _check_frame(name, index, frames)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)

    try:
        arr = pixel_array(ds, index=index)  # decodes only this frame; YBR is converted to RGB
    except Exception as exc:
        raise _decode_error(ds, name) from exc

    window, colour = None, 0.0
    if photometric == "PALETTE COLOR":
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(arr, ds) / (2**lut_bits - 1)
        gray, colour = rgb @ _LUMA, colour_fraction(rgb)
    elif arr.ndim == 3:  # RGB / YBR: colour photographs or screenshots, no windowing defined
        rgb = arr.astype(np.float64) / (2**bits - 1)
        gray, colour = rgb @ _LUMA, colour_fraction(rgb)
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)  # stored values -> e.g. Hounsfield units
        if not np.isfinite(values).all():
            raise _not_finite(name)
        gray, window = _voi(values, ds, apply_voi)
        if photometric == "MONOCHROME1":  # minimum value is white
            gray = 1.0 - gray
    if not np.isfinite(gray).all():
        raise _not_finite(name)

    spacing = ds.get("PixelSpacing")
    thickness = ds.get("SliceThickness")
    meta = _meta(
        format="DICOM",
        mode=photometric,
        width=cols,
        height=rows,
        frames=frames,
        frame=index,
        modality=str(ds.Modality) if ds.get("Modality") else None,
        pixel_spacing=[float(v) for v in spacing] if spacing is not None and len(spacing) == 2 else None,
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        bits_stored=int(ds.BitsStored) if ds.get("BitsStored") else None,
        window=window,
        colour_fraction=colour,
    )
    return gray.astype(np.float32), meta


def _voi(x: np.ndarray, ds, apply_voi):
    """Window a monochrome frame to [0, 1] (DICOM PS3.3 C.11.2): VOI LUT, else the file's window, else percentiles."""
    if ds.get("VOILUTSequence"):
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(x, ds) / (2**lut_bits - 1)
        return out, {"center": None, "width": None, "source": "dicom_lut", "index": 0}
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centers, widths = ds["WindowCenter"], ds["WindowWidth"]
        c = float(centers.value[0] if centers.VM > 1 else centers.value)  # several windows: use the first
        w = float(widths.value[0] if widths.VM > 1 else widths.value)
        func = str(ds.get("VOILUTFunction") or "LINEAR").upper()
        out = None
        if func == "LINEAR" and w >= 1:  # C.11.2.1.2.1: centre and width are shifted by half a unit
            out = (x > c - 0.5).astype(np.float64) if w == 1 else np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        elif func == "LINEAR_EXACT" and w > 0:
            out = np.clip((x - c) / w + 0.5, 0, 1)
        elif func == "SIGMOID" and w > 0:
            out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700)))
        if out is not None:  # otherwise the stored window is unusable: fall through to percentiles
            window = {"center": c, "width": w, "source": "dicom", "index": 0, "count": max(centers.VM, 1)}
            if func != "LINEAR":
                window["function"] = func
            return out, window
    lo, hi = (float(v) for v in np.percentile(x, [0.5, 99.5]))
    if hi <= lo:  # almost constant: fall back to the full range; a constant image stays black
        lo, hi = float(x.min()), float(x.max())
    out = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    return out, {"center": (lo + hi) / 2, "width": hi - lo, "source": "percentile", "index": None}


def _decode_error(ds, name: str) -> ScanReadError:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and ts.is_compressed:
        label = ts.name or str(ts)
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            return ScanReadError(f"{name}: the image is compressed with {label}, which cannot be decoded here.")
        if not decoder.is_available:
            options = "; ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
            return ScanReadError(
                f"{name}: the image is compressed with {label} and no decoder for it is installed. "
                f"Install one of: {options}."
            )
        return ScanReadError(
            f"{name}: the image is compressed with {label} and could not be decoded; the file may be damaged."
        )
    return ScanReadError(f"{name}: the DICOM image data is truncated or damaged and cannot be decoded.")
