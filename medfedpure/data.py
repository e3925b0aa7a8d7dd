"""Scan folders (Br35H layout), duplicate groups, group-aware splits, hospital partitions and the image cache.

A labelled folder holds one sub-folder per class (Br35H: `no/` = 0, `yes/` = 1; `pred/` is unlabelled and
never enters a split). Everything here is deterministic: the same folder and seed give a byte-identical
split CSV.

Pipeline (`python -m medfedpure data split`):
1. `list_labelled` -> files with labels; each is read once with `medfedpure.io.read_scan` (the one reader).
2. `find_duplicate_groups` -> exact copies (sha256 of the bytes) and near copies (Pearson correlation of
   32x32 thumbnails, max over the four flips, of the padded image AND of its brain bounding box), joined
   by union-find. Br35H is heavily augmented (flipped, re-cropped, intensity-changed copies of the same
   slice), so a file-level split would leak test slices into training.
3. `make_split` -> test / val / train by whole groups, stratified by class; then train AND val are
   partitioned into hospitals with Dirichlet(alpha) label skew (one proportions matrix for both).
4. `write_split` -> `split.csv` (`path,sha256,label,split,hospital,group`) + `split.json` (settings, counts).
5. `build_cache` / `load_cache` -> a compressed `.npz` of the preprocessed uint8 images, verified against the
   CSV's sha256 column; `load_split_scans` reads a subset straight from the folder with the same checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfedpure.config import (
    BR35H_CLASS_DIRS,
    CLASS_NAMES,
    DEFAULT_ALPHA,
    DEFAULT_HOSPITALS,
    DEFAULT_SEED,
    IMAGE_SIZE,
    TUMOUR_TYPES,
    UNLABELLED_DIRS,
)

__all__ = [
    "SPLIT_COLUMNS", "SPLITS", "NEAR_THRESHOLD", "CROP_THRESHOLD", "DEFAULT_TEST_FRACTION",
    "DEFAULT_VAL_FRACTION", "DEFAULT_MIN_TRAIN", "DEFAULT_MIN_VAL",
    "DataError", "ScanRecord", "FolderScan", "DuplicateGroups", "Partition", "SplitRow", "SplitResult", "Cache",
    "CheckReport", "parse_classes", "class_names_for", "list_labelled", "list_unlabelled", "read_folder",
    "find_duplicate_groups", "make_split", "hospital_shift", "apply_acquisition_shift", "split_folder",
    "write_split", "read_split", "read_split_meta", "split_sha256", "build_cache", "save_cache", "load_cache",
    "load_split_scans", "check_folder", "file_sha256", "SOURCE_COLUMNS", "tumour_type_index",
]  # fmt: skip

SPLIT_COLUMNS = ("path", "sha256", "label", "split", "hospital", "group")
# Multi-source splits (`medfedpure.sources`) add where each scan came from and its tumour type ("" = unknown
# or no tumour). Single-folder splits keep the six columns above, so older split files still read.
SOURCE_COLUMNS = SPLIT_COLUMNS + ("source", "site", "tumour_type")
SPLITS = ("train", "val", "test")
# Near-duplicate thresholds (Pearson correlation of 32x32 thumbnails). On Br35H every pair of DUPLICATES.tsv
# lies above them while the most similar tumour/no-tumour pair scores 0.936 (padded) / 0.933 (cropped).
NEAR_THRESHOLD = 0.97  # thumbnail of the whole padded image
CROP_THRESHOLD = 0.99  # thumbnail of the brain's bounding box (catches re-cropped / re-scaled copies)
THUMB_SIZE = 32
CROP_LEVEL = 0.08  # bounding box of pixels brighter than this fraction of the image maximum
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.2  # of what is left after the test split
DEFAULT_MIN_TRAIN = 30  # scans per hospital
DEFAULT_MIN_VAL = 8
MAX_PARTITION_ATTEMPTS = 1000
# Files that sit beside scans (notes, manifests) are not scans; hidden files and folders are skipped too.
SIDE_FILE_SUFFIXES = {".md", ".txt", ".tsv", ".csv", ".json"}
_SPLIT_FORMAT = 1
_CACHE_FORMAT = 1


class DataError(ValueError):
    """A data folder, split file or cache that cannot be used; the message names the file(s) concerned."""


# ---------------------------------------------------------------------------------------------------------
# listing folders


@dataclass(frozen=True)
class ScanRecord:
    path: str  # relative to the data root, POSIX separators
    label: int | None  # None for unlabelled files (pred/)


def parse_classes(text: str) -> dict[str, int]:
    """`"no=0,yes=1"` -> `{"no": 0, "yes": 1}` (folder name -> class index, indices from 0)."""
    out: dict[str, int] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value.lstrip("-").isdigit():
            raise ValueError(f"bad class mapping {item!r}: expected FOLDER=INDEX, e.g. no=0,yes=1")
        if int(value) < 0:
            raise ValueError(f"bad class mapping {item!r}: the class index must be 0 or more")
        if name in out:
            raise ValueError(f"class folder {name!r} given twice")
        out[name] = int(value)
    if not out:
        raise ValueError("empty class mapping: expected FOLDER=INDEX pairs, e.g. no=0,yes=1")
    return out


def class_names_for(class_dirs: Mapping[str, int]) -> dict[int, str]:
    """Class index -> display name: CLASS_NAMES for the Br35H mapping, else the folder name(s)."""
    if dict(class_dirs) == BR35H_CLASS_DIRS:
        return dict(enumerate(CLASS_NAMES))
    names: dict[int, list[str]] = {}
    for d, i in sorted(class_dirs.items()):
        names.setdefault(i, []).append(d)
    return {i: "+".join(v) for i, v in sorted(names.items())}


def _files_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() not in SIDE_FILE_SUFFIXES:
                out.append(Path(dirpath) / f)
    return out


def list_labelled(root, class_dirs: Mapping[str, int] = BR35H_CLASS_DIRS) -> list[ScanRecord]:
    """Every scan file under `root/<class folder>/` (recursively), with its class index, sorted by path.

    Hidden files and side files (.md .txt .tsv .csv .json) are skipped; folders not in `class_dirs`
    (e.g. Br35H's `pred/`) are never listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    records = []
    for d, label in class_dirs.items():
        folder = root / d
        if not folder.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DataError(f"class folder {d!r} not found in {root} (sub-folders there: {', '.join(found) or 'none'})")
        records += [ScanRecord(p.relative_to(root).as_posix(), int(label)) for p in _files_under(folder)]
    return sorted(records, key=lambda r: r.path)


def list_unlabelled(root, dirs: Sequence[str] = UNLABELLED_DIRS) -> list[ScanRecord]:
    """Scan files under `root/<dir>/` for the unlabelled folders (Br35H: `pred/`); missing folders are skipped."""
    root = Path(root)
    records = [ScanRecord(p.relative_to(root).as_posix(), None)
               for d in dirs if (root / d).is_dir() for p in _files_under(root / d)]  # fmt: skip
    return sorted(records, key=lambda r: r.path)


# ---------------------------------------------------------------------------------------------------------
# reading files (the one reader: medfedpure.io.read_scan)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def slice_path(path: str, plane: str, index: int) -> str:
    """The listed path of one slice of a volume file: `<file>#<plane>=<0-based index>`."""
    return f"{path}#{plane}={int(index)}"


def split_slice_path(path: str) -> tuple[str, str | None, int | None]:
    """`volumes/a.nii.gz#axial=40` -> ("volumes/a.nii.gz", "axial", 40); a plain file path -> (path, None, None).
    The split CSV's sha256 of such a row is the volume file's."""
    file_part, sep, fragment = path.partition("#")
    if not sep:
        return path, None, None
    plane, _, index = fragment.partition("=")
    return file_part, plane, int(index)


def _read_one(job: tuple[str, str, int]) -> tuple[str, np.ndarray | None, str | None]:
    """(root, relative path, size) -> (sha256 of the bytes or "", uint8 image or None, error or None)."""
    from medfedpure.io import ScanReadError, read_scan, to_uint8

    root, rel, size = job
    file_rel, plane, index = split_slice_path(rel)
    try:
        data = (Path(root) / file_rel).read_bytes()
    except OSError as exc:
        return "", None, f"{rel}: the file cannot be opened ({exc.strerror or type(exc).__name__})."
    sha = hashlib.sha256(data).hexdigest()
    try:
        scan = read_scan(data, size=size, name=Path(rel).name, colour=False,  # training data: no colour probe
                         plane=plane, slice_index=index)
    except ScanReadError as exc:
        msg = str(exc)
        name = Path(rel).name
        return sha, None, (rel + msg[len(name):]) if msg.startswith(name) else f"{rel}: {msg}"
    return sha, to_uint8(scan.image), None


def _read_many(root, paths: Sequence[str], size: int) -> list[tuple]:
    # One process is fast enough (Br35H: 3000 files in about 2 s; JPEGs are decoded at reduced scale), and
    # a process pool would need a `__main__` guard in every caller's script.
    return [_read_one((str(root), p, int(size))) for p in paths]


@dataclass
class FolderScan:
    """Every file found under a data folder, read once."""

    records: list[ScanRecord]
    sha256: list[str]  # "" where the file could not be opened
    images: np.ndarray  # uint8 (N, size, size); zeros where unreadable
    errors: dict[str, str]  # relative path -> message (ScanReadError text, naming the file)

    @property
    def readable(self) -> np.ndarray:
        return np.array([r.path not in self.errors for r in self.records], dtype=bool)


def read_folder(root, records: Sequence[ScanRecord], size: int = IMAGE_SIZE) -> FolderScan:
    """Read and preprocess `records` (from list_labelled / list_unlabelled); one bad file never stops the rest."""
    results = _read_many(root, [r.path for r in records], size)
    images = np.zeros((len(records), size, size), dtype=np.uint8)
    errors, shas = {}, []
    for i, (rec, (sha, img, err)) in enumerate(zip(records, results)):
        shas.append(sha)
        if err is not None:
            errors[rec.path] = err
        else:
            images[i] = img
    return FolderScan(list(records), shas, images, errors)


# ---------------------------------------------------------------------------------------------------------
# duplicate groups


@dataclass
class DuplicateGroups:
    group: np.ndarray  # int64 (N,): group id per item, numbered 0.. in order of each group's first item
    pairs: np.ndarray  # int64 (E, 2), i < j: the links found (exact copies and near copies)
    exact_copies: int  # items whose bytes equal an earlier item's

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.group) if len(self.group) else np.zeros(0, dtype=np.int64)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0

    @property
    def largest(self) -> int:
        return int(self.sizes.max()) if len(self.group) else 0

    def members(self, min_size: int = 2) -> list[list[int]]:
        """Item indices of each group with at least `min_size` items, in group-id order."""
        out: list[list[int]] = [[] for _ in range(self.n_groups)]
        for i, g in enumerate(self.group):
            out[g].append(i)
        return [m for m in out if len(m) >= min_size]


def _resize(a: np.ndarray, n: int) -> np.ndarray:
    from PIL import Image

    if a.shape[0] % n == 0 and a.shape[1] % n == 0:  # exact box average
        return a.reshape(n, a.shape[0] // n, n, a.shape[1] // n).mean(axis=(1, 3))
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32)).resize((n, n), Image.Resampling.BOX))


def _thumbnails(images: np.ndarray, n: int = THUMB_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """-> (padded-image thumbnails, bounding-box thumbnails), float32 (N, n, n)."""
    from PIL import Image

    full = np.zeros((len(images), n, n), dtype=np.float32)
    crop = np.zeros_like(full)
    for i, img in enumerate(images):
        a = np.asarray(img, dtype=np.float32)
        full[i] = _resize(a, n)
        peak = float(a.max())
        if peak <= 0:
            continue  # blank image: correlates with nothing
        mask = a > CROP_LEVEL * peak
        ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = a[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        crop[i] = np.asarray(Image.fromarray(np.ascontiguousarray(box)).resize((n, n), Image.Resampling.BILINEAR))
    return full, crop


def _standardise(t: np.ndarray) -> np.ndarray:
    """(N, n, n) -> (N, n*n) rows with zero mean and unit norm (a constant row stays zero)."""
    f = t.reshape(len(t), -1).astype(np.float64)
    f -= f.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return (f / np.where(norm > 1e-9, norm, np.inf)).astype(np.float32)


def _near_pairs(thumbs: np.ndarray, threshold: float, flips: bool, block: int = 1024) -> np.ndarray:
    """Pairs (i < j) whose thumbnails correlate >= threshold, max over the 4 flips when `flips`."""
    n, s, _ = thumbs.shape
    feats = _standardise(thumbs)
    idx = np.arange(s * s).reshape(s, s)
    perms = [idx, idx[:, ::-1], idx[::-1, :], idx[::-1, ::-1]] if flips else [idx]
    # <f_i, flip(f_j)> = <flip(f_i), f_j>: each flipped product is symmetric, so the upper triangle suffices.
    variants = [feats[:, p.ravel()] for p in perms]
    out = []
    for i0 in range(0, n, block):
        rows = feats[i0 : i0 + block]
        sim = rows @ variants[0].T
        for v in variants[1:]:
            np.maximum(sim, rows @ v.T, out=sim)
        ii, jj = np.nonzero(sim >= threshold)
        ii = ii + i0
        keep = jj > ii
        out.append(np.stack([ii[keep], jj[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def _union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is always the group's first item
    roots = [find(i) for i in range(n)]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def find_duplicate_groups(
    images: np.ndarray,
    sha256: Sequence[str] | None = None,
    *,
    threshold: float = NEAR_THRESHOLD,
    crop_threshold: float | None = CROP_THRESHOLD,
    flips: bool = True,
    thumb: int = THUMB_SIZE,
    valid: np.ndarray | None = None,
) -> DuplicateGroups:
    """Group exact and near-duplicate images (union-find over all links).

    images: (N, H, W) uint8 or float (the preprocessed, padded scans); sha256: the files' byte hashes (exact
    copies are linked whatever their pixels); valid: bool (N,) - False items (unreadable) link only by sha256.
    Near link: Pearson correlation of the `thumb` x `thumb` thumbnails >= threshold (whole padded image) or
    >= crop_threshold (image cropped to its bounding box), maximised over horizontal / vertical flips.
    """
    images = np.asarray(images)
    n = len(images)
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    exact = 0
    if sha256 is not None:
        first: dict[str, int] = {}
        for i, h in enumerate(sha256):
            if not h:
                continue
            if h in first:
                pairs.append(np.array([[first[h], i]], dtype=np.int64))
                exact += 1
            else:
                first[h] = i
    valid_idx = np.arange(n) if valid is None else np.flatnonzero(valid)
    if len(valid_idx) > 1:
        full, crop = _thumbnails(images[valid_idx], thumb)
        found = [_near_pairs(full, threshold, flips)]
        if crop_threshold is not None:
            found.append(_near_pairs(crop, crop_threshold, flips))
        near = np.unique(np.concatenate(found), axis=0) if sum(map(len, found)) else np.zeros((0, 2), np.int64)
        pairs.append(valid_idx[near].astype(np.int64))
    allp = np.concatenate(pairs)
    allp = np.unique(np.sort(allp, axis=1), axis=0) if len(allp) else allp
    return DuplicateGroups(_union_find(n, allp), allp, exact)


# ---------------------------------------------------------------------------------------------------------
# split and hospital partition


@dataclass
class Partition:
    split: np.ndarray  # str (N,): "train" / "val" / "test"
    hospital: np.ndarray  # int64 (N,): 0..H-1 for train and val, -1 for test
    proportions: np.ndarray  # float (H, C): the Dirichlet draw p[hospital, class] that was used
    attempts: int  # Dirichlet draws needed to meet the minimum sizes


def _group_labels(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (majority label per group (ties: lower label), size per group)."""
    n_groups = int(groups.max()) + 1
    counts = np.zeros((n_groups, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (groups, labels), 1)
    return counts.argmax(axis=1), counts.sum(axis=1)


def _pick(order: Sequence[int], sizes: np.ndarray, target: int) -> list[int]:
    """Walk the (shuffled) groups, keep each that still fits under `target`; then the closest overshoot."""
    chosen, count = [], 0
    for g in order:
        if count >= target:
            break
        if count + sizes[g] <= target:
            chosen.append(g)
            count += int(sizes[g])
    if count < target:
        taken = set(chosen)
        rest = [(int(sizes[g]), k, g) for k, g in enumerate(order) if g not in taken]
        if rest:
            size, _, best = min(rest)  # the smallest group left: the least overshoot
            if count + size - target < target - count:
                chosen.append(best)
    return chosen


def _assign(groups_c: list[int], sizes: np.ndarray, share: np.ndarray, rng: np.random.Generator) -> dict[int, int]:
    """Groups of one class -> hospitals: biggest group first, each to the hospital furthest below its share."""
    order = [groups_c[i] for i in rng.permutation(len(groups_c))]
    order.sort(key=lambda g: -sizes[g])  # stable: random order among equal sizes
    target = share * float(sum(sizes[g] for g in groups_c))
    current = np.zeros(len(share))
    out = {}
    for g in order:
        h = int(np.argmax(target - current))
        out[g] = h
        current[h] += sizes[g]
    return out


def make_split(
    labels: Sequence[int],
    groups: Sequence[int],
    *,
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    hospitals: int = DEFAULT_HOSPITALS,
    alpha: float = DEFAULT_ALPHA,
    min_train: int = DEFAULT_MIN_TRAIN,
    min_val: int = DEFAULT_MIN_VAL,
    max_attempts: int = MAX_PARTITION_ATTEMPTS,
    fixed: Sequence[str] | None = None,
) -> Partition:
    """Group-aware, class-stratified test / val / train split, then a Dirichlet(alpha) hospital partition.

    Per class (a group counts for its majority label), whole groups in seeded random order go to test until
    round(test_fraction * class size) is reached; val takes round(val_fraction * rest) the same way; train
    is the remainder. Then p[hospital, class] ~ Dirichlet(alpha) per class is drawn once and BOTH the train
    and the val groups of class c are spread over hospitals in proportion p[:, c] (so a hospital's val scans
    follow its own label mix). Draws are repeated (deterministically) until every hospital has >= min_train
    train and >= min_val val scans. Test rows get hospital -1. Test, val and partition use independent
    random streams from `seed`: changing the hospital settings leaves test and val unchanged.
    `fixed`: per row, "test" (its group is test), "notest" (its group is train or val, chosen as above) or ""
    (free); a group with any "test" row is test. Fixed groups do not count towards the free groups' test share.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    if labels.shape != groups.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError("labels and groups must be 1-D sequences of the same, non-zero length")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1):
        raise ValueError("test_fraction and val_fraction must be in [0, 1)")
    if hospitals < 1 or alpha <= 0:
        raise ValueError("hospitals must be >= 1 and alpha > 0")
    _, groups = np.unique(groups, return_inverse=True)  # compact ids 0..G-1
    glabel, gsize = _group_labels(labels, groups)
    n_classes = int(labels.max()) + 1
    test_rng, val_rng, part_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    gsplit = np.array(["train"] * len(gsize), dtype=object)
    held = np.zeros(len(gsize), dtype=bool)  # groups whose test / not-test side is already decided
    if fixed is not None:
        for g, f in zip(groups.tolist(), fixed):
            if f == "test":
                gsplit[g] = "test"
            elif f not in ("", "notest"):
                raise ValueError(f"fixed split must be 'test', 'notest' or '', not {f!r}")
            held[g] |= bool(f)
    for c in range(n_classes):
        members = np.flatnonzero((glabel == c) & ~held)
        total = int(gsize[members].sum())
        test = _pick(members[test_rng.permutation(len(members))].tolist(), gsize, round(test_fraction * total))
        gsplit[test] = "test"
        rest = np.flatnonzero((glabel == c) & (gsplit == "train"))  # free and kept-not-test groups alike
        rest_total = int(gsize[rest].sum())
        val = _pick(rest[val_rng.permutation(len(rest))].tolist(), gsize, round(val_fraction * rest_total))
        gsplit[val] = "val"

    n_train = int(gsize[gsplit == "train"].sum())
    n_val = int(gsize[gsplit == "val"].sum())
    check_val = val_fraction > 0
    if n_train < hospitals * min_train or (check_val and n_val < hospitals * min_val):
        raise DataError(
            f"too few scans for {hospitals} hospitals: {n_train} train / {n_val} val scans, need at least "
            f"{min_train} / {min_val} per hospital; use fewer hospitals or lower the minimum sizes"
        )
    ghosp = np.full(len(gsize), -1, dtype=np.int64)
    for attempt in range(1, max_attempts + 1):
        p = part_rng.dirichlet(np.full(hospitals, float(alpha)), size=n_classes).T  # (H, C)
        for c in range(n_classes):
            for name in ("train", "val"):
                members = np.flatnonzero((glabel == c) & (gsplit == name)).tolist()
                for g, h in _assign(members, gsize, p[:, c], part_rng).items():
                    ghosp[g] = h
        train_n = np.bincount(ghosp[gsplit == "train"], weights=gsize[gsplit == "train"], minlength=hospitals)
        val_n = np.bincount(ghosp[gsplit == "val"], weights=gsize[gsplit == "val"], minlength=hospitals)
        if train_n.min() >= min_train and (not check_val or val_n.min() >= min_val):
            break
    else:
        raise DataError(
            f"no hospital partition with >= {min_train} train and >= {min_val} val scans per hospital in "
            f"{max_attempts} Dirichlet(alpha={alpha}) draws; use fewer hospitals, a larger alpha or lower minimums"
        )
    ghosp[gsplit == "test"] = -1
    return Partition(gsplit[groups].astype(str), ghosp[groups], p, attempt)


# ---------------------------------------------------------------------------------------------------------
# per-hospital acquisition shift (scanner differences), off by default


def hospital_shift(hospital: int, seed: int = DEFAULT_SEED) -> dict:
    """Deterministic acquisition settings of one hospital: {contrast, gamma, noise_sigma, blur_sigma}.

    contrast (intensity gain) in [0.82, 1.22], gamma in [0.78, 1.28] (both log-uniform), noise_sigma (additive
    Gaussian, on the [0, 1] scale) in [0, 0.03], blur_sigma (Gaussian, pixels) in [0, 1].
    """
    if hospital < 0:
        raise ValueError("hospital must be >= 0 (test rows, hospital -1, are not shifted)")
    rng = np.random.default_rng([int(seed), int(hospital), 0x5A1F7])
    return {
        "contrast": round(float(math.exp(rng.uniform(-0.2, 0.2))), 4),
        "gamma": round(float(math.exp(rng.uniform(-0.25, 0.25))), 4),
        "noise_sigma": round(float(rng.uniform(0.0, 0.03)), 4),
        "blur_sigma": round(float(rng.uniform(0.0, 1.0)), 4),
    }


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def apply_acquisition_shift(images, params: Mapping[str, float], rng=None):
    """Apply one hospital's shift to images in [0, 1]; returns the same type (numpy or torch) and shape.

    images: (..., H, W) numpy array or torch tensor. x -> clip(contrast * x**gamma) -> Gaussian blur ->
    + N(0, noise_sigma^2) -> clip to [0, 1]. rng: numpy Generator or torch Generator for the noise
    (required when noise_sigma > 0, so every noise draw is seeded).
    """
    contrast = float(params.get("contrast", 1.0))
    gamma = float(params.get("gamma", 1.0))
    noise = float(params.get("noise_sigma", 0.0))
    blur = float(params.get("blur_sigma", 0.0))
    if noise > 0 and rng is None:
        raise ValueError("apply_acquisition_shift needs rng (numpy or torch Generator) when noise_sigma > 0")
    if isinstance(images, np.ndarray):
        x = np.clip(np.clip(images.astype(np.float32), 0, 1) ** gamma * contrast, 0, 1)
        if blur > 0 and min(x.shape[-2:]) > 1:
            k = _gauss_kernel(blur)
            r = len(k) // 2
            for axis in (-2, -1):
                pad = [(0, 0)] * x.ndim
                pad[axis] = (r, r)
                xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
                length = x.shape[axis]
                x = sum(k[i] * np.take(xp, np.arange(i, i + length), axis=axis) for i in range(len(k)))
        if noise > 0:
            if not isinstance(rng, np.random.Generator):
                raise TypeError("numpy images need a numpy Generator as rng")
            x = x + rng.normal(0.0, noise, size=x.shape).astype(np.float32)
        return np.clip(x, 0, 1).astype(np.float32)

    import torch
    import torch.nn.functional as F

    x = (images.clamp(0, 1) ** gamma * contrast).clamp(0, 1)
    if blur > 0 and min(x.shape[-2:]) > 1:
        k = torch.from_numpy(_gauss_kernel(blur)).to(x)
        r = len(k) // 2
        shape = x.shape
        y = x.reshape(-1, 1, *shape[-2:])
        mode = "reflect" if min(shape[-2:]) > r else "replicate"
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        x = y.reshape(shape)
    if noise > 0:
        if isinstance(rng, torch.Generator):
            eps = torch.randn(x.shape, generator=rng, device=rng.device, dtype=x.dtype).to(x.device)
        elif isinstance(rng, np.random.Generator):
            eps = torch.from_numpy(rng.normal(0.0, 1.0, size=tuple(x.shape)).astype(np.float32)).to(x)
        else:
            raise TypeError("rng must be a torch.Generator or numpy Generator")
        x = x + noise * eps
    return x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# split files


@dataclass(frozen=True)
class SplitRow:
    path: str
    sha256: str
    label: int
    split: str  # train / val / test
    hospital: int  # -1 for test
    group: int
    source: str = ""  # source name (multi-source splits), "" for a single folder
    site: str = ""  # acquisition site within the source when known (TCGA: DU, HT), else ""
    tumour_type: str = ""  # glioma / meningioma / pituitary where the source says, else ""


def write_split(rows: Iterable[SplitRow], csv_path) -> str:
    """Write the split CSV (sorted by path, `\\n` line endings, ints only) and return its sha256."""
    rows = sorted(rows, key=lambda r: r.path)
    multi = any(r.source for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SOURCE_COLUMNS if multi else SPLIT_COLUMNS)
    for r in rows:
        cells = [r.path, r.sha256, int(r.label), r.split, int(r.hospital), int(r.group)]
        w.writerow(cells + [r.source, r.site, r.tumour_type] if multi else cells)
    data = buf.getvalue().encode("utf-8")
    Path(csv_path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def split_sha256(csv_path) -> str:
    """sha256 of the split CSV's bytes (recorded in the sidecar JSON, the cache and model cards)."""
    return file_sha256(csv_path)


def read_split(csv_path) -> list[SplitRow]:
    """Read and validate a split CSV written by `write_split` (or by hand with the same columns)."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"split file not found: {csv_path}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    columns = None if header is None else tuple(h.strip() for h in header)
    if columns not in (SPLIT_COLUMNS, SOURCE_COLUMNS):
        raise DataError(f"{csv_path.name}: not a split file; the header must be {','.join(SPLIT_COLUMNS)} "
                        f"(optionally followed by ,{','.join(SOURCE_COLUMNS[len(SPLIT_COLUMNS):])})")
    rows, seen = [], set()
    for lineno, cells in enumerate(reader, start=2):
        if not cells:
            continue
        try:
            if len(cells) != len(columns):
                raise ValueError(f"{len(cells)} columns instead of {len(columns)}")
            path, sha, label, split, hospital, group, *extra = (c.strip() for c in cells)
            row = SplitRow(path, sha.lower(), int(label), split, int(hospital), int(group), *extra)
            if split not in SPLITS:
                raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
            if len(row.sha256) != 64 or any(ch not in "0123456789abcdef" for ch in row.sha256):
                raise ValueError("sha256 must be 64 hex digits")
            if not path or path.startswith("/") or ".." in Path(path).parts or "\\" in path:
                raise ValueError(f"path {path!r} must be relative to the data folder, without '..'")
            if row.label < 0 or row.group < 0 or (row.hospital < 0) != (split == "test") or row.hospital < -1:
                raise ValueError("label and group must be >= 0; hospital is -1 exactly for test rows")
            if path in seen:
                raise ValueError(f"path {path!r} appears twice")
        except ValueError as exc:
            raise DataError(f"{csv_path.name}, line {lineno}: {exc}") from None
        seen.add(path)
        rows.append(row)
    if not rows:
        raise DataError(f"{csv_path.name}: the split file has no rows")
    return rows


def _meta_path(csv_path) -> Path:
    return Path(csv_path).with_suffix(".json")


def read_split_meta(csv_path) -> dict:
    """The sidecar `<name>.json` of a split CSV (settings, counts, csv sha256, shift parameters)."""
    return json.loads(_meta_path(csv_path).read_text(encoding="utf-8"))


def _counts(rows: Sequence[SplitRow]) -> dict:
    by_split: dict[str, dict[str, int]] = {}
    by_hosp: dict[str, dict[str, dict[str, int]]] = {}
    for r in rows:
        s = by_split.setdefault(r.split, {})
        s[str(r.label)] = s.get(str(r.label), 0) + 1
        if r.hospital >= 0:
            h = by_hosp.setdefault(str(r.hospital), {}).setdefault(r.split, {})
            h[str(r.label)] = h.get(str(r.label), 0) + 1
    order = {s: i for i, s in enumerate(SPLITS)}
    return {
        "split": {k: dict(sorted(v.items())) for k, v in sorted(by_split.items(), key=lambda kv: order[kv[0]])},
        "hospital": {k: {s: dict(sorted(c.items())) for s, c in sorted(v.items(), key=lambda kv: order[kv[0]])}
                     for k, v in sorted(by_hosp.items(), key=lambda kv: int(kv[0]))},  # fmt: skip
    }


def _r6(x) -> float:
    return float(f"{float(x):.6g}")


@dataclass
class SplitResult:
    rows: list[SplitRow]
    meta: dict  # what was written to the sidecar JSON
    csv_path: Path
    json_path: Path
    duplicates: DuplicateGroups = field(repr=False)


def split_folder(
    root,
    out_csv,
    *,
    class_dirs: Mapping[str, int] = BR35H_CLASS_DIRS,
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    hospitals: int = DEFAULT_HOSPITALS,
    alpha: float = DEFAULT_ALPHA,
    min_train: int = DEFAULT_MIN_TRAIN,
    min_val: int = DEFAULT_MIN_VAL,
    threshold: float = NEAR_THRESHOLD,
    crop_threshold: float | None = CROP_THRESHOLD,
    shift: bool = False,
    size: int = IMAGE_SIZE,
) -> SplitResult:
    """List, read, group and split a labelled folder; write `out_csv` and its sidecar `<name>.json`.

    Fails (DataError naming the files) if any labelled file cannot be read: run `data check` first.
    """
    records = list_labelled(root, class_dirs)
    if not records:
        raise DataError(f"no scan files under the class folders {', '.join(class_dirs)} of {root}")
    scan = read_folder(root, records, size=size)
    if scan.errors:
        listed = "; ".join(list(scan.errors.values())[:5])
        more = f" (and {len(scan.errors) - 5} more)" if len(scan.errors) > 5 else ""
        raise DataError(f"{len(scan.errors)} file(s) cannot be read: {listed}{more}. Run `data check`.")
    dups = find_duplicate_groups(scan.images, scan.sha256, threshold=threshold, crop_threshold=crop_threshold)
    labels = np.array([r.label for r in records], dtype=np.int64)
    part = make_split(labels, dups.group, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
                      hospitals=hospitals, alpha=alpha, min_train=min_train, min_val=min_val)  # fmt: skip
    rows = [SplitRow(r.path, h, int(r.label), str(s), int(k), int(g))
            for r, h, s, k, g in zip(records, scan.sha256, part.split, part.hospital, dups.group)]  # fmt: skip
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    digest = write_split(rows, out_csv)
    gl, _ = _group_labels(labels, dups.group)
    mixed = sum(1 for m in dups.members() if len(set(labels[m].tolist())) > 1)
    meta = {
        "format": _SPLIT_FORMAT,
        "csv": out_csv.name,
        "csv_sha256": digest,
        "columns": list(SPLIT_COLUMNS),
        "classes": {str(k): v for k, v in sorted(class_dirs.items())},
        "class_names": {str(k): v for k, v in class_names_for(class_dirs).items()},
        "seed": int(seed),
        "test_fraction": _r6(test_fraction),
        "val_fraction": _r6(val_fraction),
        "hospitals": int(hospitals),
        "alpha": _r6(alpha),
        "min_train": int(min_train),
        "min_val": int(min_val),
        "partition_attempts": int(part.attempts),
        "dirichlet_proportions": [[_r6(v) for v in row] for row in part.proportions.tolist()],
        "image_size": int(size),
        "duplicates": {
            "method": "sha256 + Pearson correlation of 32x32 thumbnails (padded image and bounding box), "
                      "max over flips, union-find",  # fmt: skip
            "threshold": _r6(threshold),
            "crop_threshold": None if crop_threshold is None else _r6(crop_threshold),
            "exact_copies": int(dups.exact_copies),
            "links": int(len(dups.pairs)),
            "groups": dups.n_groups,
            "groups_with_copies": int((dups.sizes > 1).sum()),
            "files_in_groups_with_copies": int(dups.sizes[dups.sizes > 1].sum()),
            "largest_group": dups.largest,
            "mixed_label_groups": int(mixed),
            "groups_per_class": {str(c): int((gl == c).sum()) for c in np.unique(gl).tolist()},
        },
        "counts": _counts(rows),
        "shift": ({str(h): hospital_shift(h, seed) for h in range(hospitals)} if shift else None),
    }
    json_path = _meta_path(out_csv)
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    return SplitResult(rows, meta, out_csv, json_path, dups)


# ---------------------------------------------------------------------------------------------------------
# preprocessed image cache


@dataclass
class Cache:
    """Preprocessed scans of a split (all rows, or the subset asked for), in split-CSV order."""

    images: np.ndarray  # uint8 (N, size, size)
    labels: np.ndarray  # int64 (N,)
    paths: np.ndarray  # str (N,), relative to the data folder
    sha256: np.ndarray  # str (N,)
    split: np.ndarray  # str (N,)
    hospital: np.ndarray  # int64 (N,), -1 for test
    group: np.ndarray  # int64 (N,)
    split_sha256: str  # sha256 of the split CSV the cache was built from
    size: int
    source: np.ndarray | None = None  # str (N,): source name ("" for single-folder splits)
    tumour_type: np.ndarray | None = None  # int64 (N,): index into TUMOUR_TYPES, -1 unknown or no tumour

    def __post_init__(self):
        n = len(self.labels)
        if self.source is None:
            self.source = np.full(n, "", dtype="<U1")
        if self.tumour_type is None:
            self.tumour_type = np.full(n, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hospitals(self) -> list[int]:
        """Hospital ids present (test's -1 excluded)."""
        return sorted(int(h) for h in np.unique(self.hospital) if h >= 0)

    def mask(self, split: str | Iterable[str] | None = None, hospital: int | Iterable[int] | None = None) -> np.ndarray:
        m = np.ones(len(self), dtype=bool)
        if split is not None:
            names = [split] if isinstance(split, str) else list(split)
            bad = set(names) - set(SPLITS)
            if bad:
                raise ValueError(f"unknown split(s) {sorted(bad)}; expected {', '.join(SPLITS)}")
            m &= np.isin(self.split, names)
        if hospital is not None:
            m &= np.isin(self.hospital, [hospital] if isinstance(hospital, (int, np.integer)) else list(hospital))
        return m

    def subset(self, split=None, hospital=None) -> Cache:
        m = self.mask(split, hospital)
        return Cache(self.images[m], self.labels[m], self.paths[m], self.sha256[m], self.split[m],
                     self.hospital[m], self.group[m], self.split_sha256, self.size, self.source[m],
                     self.tumour_type[m])  # fmt: skip

    def select(self, split=None, hospital=None):
        """-> (images float32 tensor (N, 1, H, W) in [0, 1], labels int64 tensor (N,))."""
        import torch

        m = self.mask(split, hospital)
        x = torch.from_numpy(self.images[m].astype(np.float32) / 255.0).unsqueeze(1)
        return x, torch.from_numpy(self.labels[m].astype(np.int64))

    def counts(self) -> dict:
        """{split: {hospital: {label: n}}} (plain ints, for printing / JSON)."""
        out: dict = {}
        for s, h, y in zip(self.split.tolist(), self.hospital.tolist(), self.labels.tolist()):
            d = out.setdefault(s, {}).setdefault(int(h), {})
            d[int(y)] = d.get(int(y), 0) + 1
        return out


def tumour_type_index(name: str) -> int:
    """"glioma" -> 0 ... (TUMOUR_TYPES order); "" (unknown, or no tumour) -> -1."""
    if not name:
        return -1
    if name not in TUMOUR_TYPES:
        raise DataError(f"unknown tumour type {name!r}; expected one of {', '.join(TUMOUR_TYPES)}")
    return TUMOUR_TYPES.index(name)


def _load_rows(root, rows: Sequence[SplitRow], size: int, split_digest: str) -> Cache:
    root = Path(root)
    results = _read_many(root, [r.path for r in rows], size)
    problems = []
    images = np.zeros((len(rows), size, size), dtype=np.uint8)
    for i, (r, (sha, img, err)) in enumerate(zip(rows, results)):
        if sha and sha != r.sha256:
            problems.append(f"{r.path}: sha256 mismatch, the file changed since the split was made "
                            f"(split {r.sha256[:12]}..., file {sha[:12]}...)")  # fmt: skip
        elif err is not None:
            problems.append(err)
        else:
            images[i] = img
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} file(s) do not match the split: " + "; ".join(problems[:10]) + more)
    return Cache(
        images=images,
        labels=np.array([r.label for r in rows], dtype=np.int64),
        paths=np.array([r.path for r in rows], dtype=str),
        sha256=np.array([r.sha256 for r in rows], dtype=str),
        split=np.array([r.split for r in rows], dtype=str),
        hospital=np.array([r.hospital for r in rows], dtype=np.int64),
        group=np.array([r.group for r in rows], dtype=np.int64),
        split_sha256=split_digest,
        size=int(size),
        source=np.array([r.source for r in rows], dtype=str),
        tumour_type=np.array([tumour_type_index(r.tumour_type) for r in rows], dtype=np.int64),
    )


def _filter_rows(rows: Sequence[SplitRow], split, hospital) -> list[SplitRow]:
    names = None if split is None else ([split] if isinstance(split, str) else list(split))
    hosp = None if hospital is None else ([hospital] if isinstance(hospital, (int, np.integer)) else list(hospital))
    if names is not None and set(names) - set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(set(names) - set(SPLITS))}; expected {', '.join(SPLITS)}")
    return [r for r in rows if (names is None or r.split in names) and (hosp is None or r.hospital in hosp)]


def load_split_scans(root, split_csv, split="test", hospital=None, size: int = IMAGE_SIZE) -> Cache:
    """Read the scans of one split (and hospital) straight from the folder, checking each file's sha256
    against the split CSV (DataError naming every file that differs, is missing or cannot be read)."""
    rows = _filter_rows(read_split(split_csv), split, hospital)
    if not rows:
        raise DataError(f"no rows with split={split!r}, hospital={hospital!r} in {Path(split_csv).name}")
    return _load_rows(root, rows, size, split_sha256(split_csv))


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A standard .npz (np.load reads it) that is byte-reproducible: fixed member timestamps; LZMA members
    (about 20% smaller than np.savez_compressed's deflate on these scans)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def build_cache(root, split_csv, out_path, size: int = IMAGE_SIZE) -> Cache:
    """Read every row of the split (sha256-verified), preprocess to `size`, save a compressed .npz.

    Arrays: images uint8 (N, size, size), labels int64, paths str, sha256 str, split str, hospital int64,
    group int64, split_sha256 str (0-d), size int64 (0-d), format int64 (0-d). Returns the Cache.
    """
    rows = read_split(split_csv)
    cache = _load_rows(root, rows, size, split_sha256(split_csv))
    save_cache(cache, out_path)
    return cache


def save_cache(cache: Cache, out_path) -> None:
    """Write a Cache as the compressed .npz that `load_cache` reads."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(out_path, {
        "images": cache.images, "labels": cache.labels, "paths": cache.paths, "sha256": cache.sha256,
        "split": cache.split, "hospital": cache.hospital, "group": cache.group,
        "split_sha256": np.array(cache.split_sha256), "size": np.array(cache.size, dtype=np.int64),
        "format": np.array(_CACHE_FORMAT, dtype=np.int64), "source": cache.source,
        "tumour_type": cache.tumour_type,
    })  # fmt: skip


def load_cache(path, split_csv=None) -> Cache:
    """Load a cache written by build_cache. With `split_csv`, also check it was built from that exact file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            cache = Cache(
                images=z["images"], labels=z["labels"].astype(np.int64), paths=z["paths"], sha256=z["sha256"],
                split=z["split"], hospital=z["hospital"].astype(np.int64), group=z["group"].astype(np.int64),
                split_sha256=str(z["split_sha256"]), size=int(z["size"]),
                source=z["source"] if "source" in z.files else None,
                tumour_type=z["tumour_type"].astype(np.int64) if "tumour_type" in z.files else None,
            )  # fmt: skip
    except FileNotFoundError:
        raise DataError(f"cache file not found: {path}") from None
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name}: not a scan cache written by `data cache` ({exc})") from None
    if split_csv is not None and split_sha256(split_csv) != cache.split_sha256:
        raise DataError(f"{path.name} was built from a different split file than {Path(split_csv).name}; rebuild it")
    return cache


# ---------------------------------------------------------------------------------------------------------
# folder check


@dataclass
class CheckReport:
    n_files: int
    class_counts: dict[str, int]  # class folder -> readable files
    unlabelled: int  # files in the unlabelled folders
    errors: dict[str, str]  # relative path -> message
    exact_copies: int
    groups_with_copies: int
    largest_group: int
    mixed_label_groups: list[list[str]]  # groups holding files of different classes (label conflicts)
    unlabelled_copies: list[str]  # unlabelled files that duplicate a labelled one


def check_folder(
    root,
    class_dirs: Mapping[str, int] = BR35H_CLASS_DIRS,
    unlabelled_dirs: Sequence[str] = UNLABELLED_DIRS,
    size: int = IMAGE_SIZE,
    threshold: float = NEAR_THRESHOLD,
    crop_threshold: float | None = CROP_THRESHOLD,
) -> CheckReport:
    """Read every file (labelled and unlabelled); report unreadable files, duplicates and class counts."""
    records = list_labelled(root, class_dirs) + list_unlabelled(root, unlabelled_dirs)
    scan = read_folder(root, records, size=size)
    ok = scan.readable
    dups = find_duplicate_groups(scan.images, scan.sha256, threshold=threshold, crop_threshold=crop_threshold,
                                 valid=ok)  # fmt: skip
    folder_of = {}
    for r in records:
        folder_of[r.path] = next((d for d in class_dirs if r.path.startswith(d + "/")), None)
    counts = {d: 0 for d in class_dirs}
    for r, good in zip(records, ok):
        if good and r.label is not None:
            counts[folder_of[r.path]] += 1
    mixed, unl = [], []
    for m in dups.members():
        labs = {records[i].label for i in m if records[i].label is not None}
        if len(labs) > 1:
            mixed.append([records[i].path for i in m])
        if labs:
            unl += [records[i].path for i in m if records[i].label is None]
    sizes = dups.sizes
    return CheckReport(
        n_files=len(records), class_counts=counts, unlabelled=sum(r.label is None for r in records),
        errors=dict(scan.errors), exact_copies=dups.exact_copies, groups_with_copies=int((sizes > 1).sum()),
        largest_group=dups.largest, mixed_label_groups=mixed, unlabelled_copies=sorted(unl),
    )  # fmt: skip
