"""The scans an evaluation runs on: a split's rows (sha256-checked) or an external folder, seeded subsets, and
which hospital's model classifies which scan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medfedpure.evaluation.provenance import _relative

__all__ = ["ScanSet", "load_scans", "make_pairs"]


@dataclass
class ScanSet:
    images: np.ndarray   # uint8 (N, H, W), preprocessed exactly as in training
    labels: np.ndarray   # int64 (N,)
    names: list[str]     # paths relative to the data folder (stable per-scan keys)
    home: np.ndarray     # int64 (N,): the scan's hospital for train/val rows, -1 otherwise
    info: dict
    source: np.ndarray | None = None       # str (N,): source (and site) name per scan, for per-source metrics
    groups: np.ndarray | None = None       # int64 (N,): duplicate group / patient, for bootstrap intervals
    tumour_type: np.ndarray | None = None  # int64 (N,): index into TUMOUR_TYPES, -1 unknown or no tumour

    def __post_init__(self):
        n = len(self.labels)
        if self.source is None:
            self.source = np.full(n, "", dtype=object)
        if self.groups is None:
            self.groups = np.arange(n, dtype=np.int64)
        if self.tumour_type is None:
            self.tumour_type = np.full(n, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def tensor(self, idx, device="cpu") -> torch.Tensor:
        return torch.from_numpy(self.images[np.asarray(idx)].astype(np.float32) / 255.0).unsqueeze(1).to(device)


def _stratified_pick(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` indices, classes in proportion (at least one of each present class), seeded; sorted."""
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    quota = {c: (labels == c).sum() * limit / len(labels) for c in classes}
    take = {c: max(1, int(math.floor(q))) for c, q in quota.items()}
    for c in sorted(classes, key=lambda c: quota[c] - math.floor(quota[c]), reverse=True):
        if sum(take.values()) >= limit:
            break
        take[c] += 1
    while sum(take.values()) > limit:
        take[max(take, key=take.get)] -= 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:take[c]] for c in classes]
    return np.sort(np.concatenate(picked))


def _external_scans(data_dir, classes: str | None):
    """Every labelled scan of a folder (class folders from `classes` or a known layout), grouped by copies."""
    from medfedpure import data as datamod
    from medfedpure.config import TUMOUR_TYPES
    from medfedpure.sources import detect_class_map, parse_class_map

    class_map = parse_class_map(classes) if classes else detect_class_map(data_dir)
    records, types = [], []
    for folder, (label, kind) in class_map.items():
        recs = datamod.list_labelled(data_dir, {folder: label})
        records += recs
        types += [TUMOUR_TYPES.index(kind) if kind else -1] * len(recs)
    order = np.argsort([r.path for r in records], kind="stable")
    records, types = [records[i] for i in order], np.asarray(types, dtype=np.int64)[order]
    folder = datamod.read_folder(data_dir, records)
    if folder.errors:
        listed = "; ".join(list(folder.errors.values())[:10])
        raise datamod.DataError(f"{len(folder.errors)} file(s) in {data_dir} cannot be read: {listed}")
    groups = datamod.find_duplicate_groups(folder.images, folder.sha256).group
    top = np.array([r.path.split("/", 1)[0] for r in records], dtype=object)
    mapping = {k: (["no_tumour", "tumour"][v[0]] + (":" + v[1] if v[1] else "")) for k, v in class_map.items()}
    return folder.images, np.array([r.label for r in records], np.int64), [r.path for r in records], groups, \
        types, top, mapping


def load_scans(data_dir, split: str = "test", split_csv=None, hospitals=None, limit: int | None = None,
               seed: int = 0, classes: str | None = None) -> ScanSet:
    """The scans to evaluate. test/val: the split CSV's rows, every file's sha256 checked (`load_split_scans`);
    all: every labelled scan in `data_dir` (an external data set in the same folder layout, no CSV).
    `limit`: a seeded class-stratified subset of at most `limit` scans (per hospital for val)."""
    from medfedpure import data as datamod

    if split == "all":
        images, labels, names, groups, types, source, mapping = _external_scans(data_dir, classes)
        home = np.full(len(labels), -1, dtype=np.int64)
        source = np.full(len(labels), Path(data_dir).name, dtype=object)
        info = {"split": "all", "split_csv": None, "split_sha256": None, "sha256_checked": False,
                "classes": mapping, "groups": int(len(np.unique(groups)))}
    elif split in ("test", "val"):
        if split_csv is None or not Path(split_csv).is_file():
            raise datamod.DataError(f"split file not found: {split_csv}")
        cache = datamod.load_split_scans(data_dir, split_csv, split,
                                         hospital=list(hospitals) if split == "val" and hospitals else None)
        images, labels, names, home = cache.images, cache.labels, list(cache.paths), cache.hospital
        groups, types = cache.group, cache.tumour_type
        sites = _sites(split_csv, names)
        source = np.array([f"{s}:{t}" if t else s for s, t in zip(cache.source.tolist(), sites)], dtype=object)
        info = {"split": split, "split_csv": Path(split_csv).name, "split_sha256": cache.split_sha256,
                "sha256_checked": True}
    else:
        raise ValueError("split must be test, val or all")
    n_available = len(labels)
    if limit is not None and limit > 0:
        if split == "val":
            keep = np.concatenate([np.flatnonzero(home == h)[_stratified_pick(labels[home == h], limit, seed)]
                                   for h in np.unique(home)])
            keep = np.sort(keep)
        else:
            keep = _stratified_pick(labels, limit, seed)
        images, labels, home = images[keep], labels[keep], home[keep]
        groups, types, source = groups[keep], types[keep], source[keep]
        names = [names[i] for i in keep]
    info.update(dir=_relative(Path(data_dir).resolve()), n_available=int(n_available), limit=limit, n=int(len(labels)),
                class_counts={str(c): int((labels == c).sum()) for c in np.unique(labels)})
    return ScanSet(images, labels, names, np.asarray(home, dtype=np.int64), info, np.asarray(source, dtype=object),
                   np.asarray(groups, dtype=np.int64), np.asarray(types, dtype=np.int64))


def _sites(split_csv, names: list[str]) -> list[str]:
    from medfedpure.data import read_split

    site = {r.path: r.site for r in read_split(split_csv)}
    return [site.get(n, "") for n in names]


def make_pairs(scans: ScanSet, hospitals: list[int], mode: str = "all", seed: int = 0) -> dict[int, np.ndarray]:
    """hospital -> indices of the scans it classifies (pairs "all" or "round-robin"; see `medfedpure.evaluation`)."""
    if scans.info.get("split") == "val":
        return {h: np.flatnonzero(scans.home == h) for h in hospitals if (scans.home == h).any()}
    if mode == "all":
        return {h: np.arange(len(scans)) for h in hospitals}
    order = np.random.default_rng(seed).permutation(len(scans))
    owner = np.empty(len(scans), dtype=np.int64)
    owner[order] = np.asarray(hospitals)[np.arange(len(scans)) % len(hospitals)]
    return {h: np.flatnonzero(owner == h) for h in hospitals if (owner == h).any()}
