"""NIfTI volumes (`.nii`, `.nii.gz`): one 2-D slice in a chosen plane, the right way up, windowed.

A volume is reoriented to RAS (nibabel's closest canonical orientation: x from the subject's left to right,
y posterior -> anterior, z inferior -> superior), then a slice is cut in one plane and laid out as radiologists
view it:
- axial (z fixed): anterior at the top, the subject's right on the image's left (radiological convention);
- coronal (y fixed): superior at the top, the subject's right on the image's left;
- sagittal (x fixed): superior at the top, anterior on the image's left.
Pixels are made square (voxel sizes differ between axes) and intensities windowed from the whole volume's own
percentiles (WINDOW_PERCENTILES), so every slice of a volume shares one window. A 4-D volume uses its first
volume. Only geometry and sizes are reported: the header's free-text fields (description, auxiliary file, intent
name) can name a patient and are never read out.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
AXIS_OF_PLANE = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS axis held fixed
WINDOW_PERCENTILES = (0.5, 99.5)
SIDE_LABELS = {  # (left, right, top, bottom) of the displayed slice
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


class NiftiError(ValueError):
    """A NIfTI file that cannot be read, or a plane / slice it does not have (message without file name)."""


@dataclass
class Volume:
    data: np.ndarray  # float32 (X, Y, Z) in RAS, windowed to [0, 1]
    zooms: tuple[float, float, float]  # voxel size in mm along x, y, z
    volumes: int  # 4th dimension of the file (1 for a 3-D volume); only the first is kept
    window: tuple[float, float] | None = None  # the stored intensities mapped to 0 and 1 (WINDOW_PERCENTILES)

    def slices(self, plane: str) -> int:
        return int(self.data.shape[AXIS_OF_PLANE[_plane(plane)]])

    def middle(self, plane: str) -> int:
        """The default slice of a plane: the middle of the head (its foreground's centre of mass)."""
        axis = AXIS_OF_PLANE[_plane(plane)]
        other = tuple(a for a in range(3) if a != axis)
        mass = (self.data > 0.1).sum(axis=other).astype(np.float64)
        if mass.sum() == 0:
            return self.slices(plane) // 2
        return int(round(float((mass * np.arange(len(mass))).sum() / mass.sum())))


def is_nifti(head: bytes) -> bool:
    """True for the first bytes of a NIfTI-1 / NIfTI-2 file, gzipped or not."""
    if head[:2] == b"\x1f\x8b":
        try:
            head = gzip.GzipFile(fileobj=io.BytesIO(head)).read(348)
        except (OSError, EOFError):
            # A truncated gzip stream still yields its first bytes through zlib.
            import zlib

            try:
                head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
            except zlib.error:
                return False
    if len(head) < 348:
        return False
    sizeof = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    if 348 in sizeof:
        return head[344:347] in (b"n+1", b"ni1")
    if 540 in sizeof:
        return head[4:7] in (b"n+2", b"ni2")
    return False


def _plane(plane: str) -> str:
    p = str(plane).strip().lower()
    if p not in PLANES:
        raise NiftiError(f"unknown plane {plane!r}; choose axial, coronal or sagittal")
    return p


def read_volume(data: bytes, max_voxels: int = 400_000_000) -> Volume:
    """NIfTI bytes -> the first 3-D volume in RAS, windowed to [0, 1]. NiftiError on anything unreadable."""
    import nibabel as nib

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        img = nib.Nifti1Image.from_bytes(raw) if int.from_bytes(raw[:4], "little") in (348,) or int.from_bytes(
            raw[:4], "big") == 348 else nib.Nifti2Image.from_bytes(raw)
    except Exception as exc:  # nibabel raises many kinds; its text may quote header fields
        raise NiftiError(f"the NIfTI file is truncated or damaged and cannot be read ({type(exc).__name__})") from exc
    shape = img.shape
    if len(shape) < 3 or any(int(s) < 2 for s in shape[:3]):
        raise NiftiError(f"the NIfTI file holds no 3-D volume (its shape is {tuple(int(s) for s in shape)})")
    if int(np.prod(shape[:3])) > max_voxels:
        raise NiftiError("the NIfTI volume is too large to load")
    volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    try:
        img = nib.as_closest_canonical(img.slicer[..., 0] if len(shape) > 3 else img)
        while img.ndim > 3:  # 5-D files: keep the first of every extra dimension
            img = img.slicer[..., 0]
        vol = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # noqa: BLE001
        raise NiftiError(f"the NIfTI volume cannot be decoded ({type(exc).__name__})") from exc
    if not np.all(np.isfinite(vol)):
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(np.percentile(vol, WINDOW_PERCENTILES[0]))
    # The upper end from the head alone (voxels above the volume's mean): whole-head volumes are mostly air, so
    # a percentile of every voxel lands in soft tissue and saturates the brain.
    fg = vol[vol > vol.mean()]
    hi = float(np.percentile(fg if fg.size else vol, WINDOW_PERCENTILES[1]))
    if hi <= lo:
        raise NiftiError("the NIfTI volume is blank (every voxel has the same value)")
    vol = np.clip((vol - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    zooms = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    return Volume(vol, zooms, volumes, (lo, hi))


def slice_image(volume: Volume, plane: str, index: int) -> np.ndarray:
    """One slice (0-based voxel index along the plane's axis) as an upright 2-D image with square pixels."""
    plane = _plane(plane)
    n = volume.slices(plane)
    if not 0 <= int(index) < n:
        raise NiftiError(f"slice {int(index) + 1} does not exist in the {plane} plane (slices 1 to {n})")
    v, (zx, zy, zz) = volume.data, volume.zooms
    if plane == "axial":
        img, rows_mm, cols_mm = v[:, :, index].T[::-1, ::-1], zy, zx  # rows: A at top; cols: R at left
    elif plane == "coronal":
        img, rows_mm, cols_mm = v[:, index, :].T[::-1, ::-1], zz, zx  # rows: S at top; cols: R at left
    else:
        img, rows_mm, cols_mm = v[index, :, :].T[::-1, ::-1], zz, zy  # rows: S at top; cols: A at left
    img = np.ascontiguousarray(img, dtype=np.float32)
    if abs(rows_mm - cols_mm) > 1e-3 * max(rows_mm, cols_mm):
        from PIL import Image

        unit = min(rows_mm, cols_mm)
        h, w = img.shape
        size = (max(1, round(w * cols_mm / unit)), max(1, round(h * rows_mm / unit)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    return img


def brain_slices(volume: Volume, plane: str, count: int) -> list[int]:
    """`count` evenly spaced slice indices of a whole-head volume (RAS) that show brain, not only neck or scalp.

    From the head's extent (voxels above 15% of the window): axial slices from 20 mm to 110 mm below the vertex
    (the skull base and the cerebellum included); coronal ones from 25 mm to 170 mm in front of the back of the
    head; sagittal ones where the head's cross-section is at least 55% of its largest (the outer scalp and the
    ears left out). A heuristic for healthy adult heads, checked by eye on montages (reports/ixi_slices.png).
    """
    plane = _plane(plane)
    axis = AXIS_OF_PLANE[plane]
    head = volume.data > 0.15
    other = tuple(a for a in range(3) if a != axis)
    area = head.sum(axis=other).astype(np.float64)
    present = np.nonzero(area > 0.05 * area.max())[0]
    if len(present) == 0:
        return []
    mm = volume.zooms[axis]
    if plane == "axial":
        top = present[-1]
        lo, hi = top - 110.0 / mm, top - 20.0 / mm
    elif plane == "coronal":
        back = present[0]
        lo, hi = back + 25.0 / mm, back + 170.0 / mm
    else:
        big = np.nonzero(area >= 0.55 * area.max())[0]
        lo, hi = big[0], big[-1]
    lo, hi = max(int(np.ceil(lo)), 0), min(int(np.floor(hi)), len(area) - 1)
    if hi < lo:
        return []
    return sorted({int(round(i)) for i in np.linspace(lo, hi, count)})
