"""Several scan sources in one split: declared sources, cross-source duplicate groups, real sites as hospitals.

A source is one folder under a data root with a small declaration (`sources.toml` at the repository root):
which sub-folders hold which class (and tumour type, where the source knows it), how its scans are grouped
so that copies never straddle a split (near-duplicate groups, or patients from a labels table), and whether its
scans are spread over simulated hospitals or belong to real sites that are hospitals of their own.

`split_sources(root, sources, out_csv)`:
1. list every labelled file of every source and read it once (the one reader, `medfedpure.io.read_scan`);
2. group: exact and near copies found across ALL sources (a Br35H slice re-encoded in another set is caught),
   the sources' own duplicate tables, and one group per patient where the source has patients;
3. split whole groups into test / val / train, stratified by source and class; the "partition" sources' train and
   val groups go to hospitals 0..P-1 with Dirichlet label skew over (source, class) strata, each site of a
   "site" source is one more hospital with its own train / val / test; sites named in `hold_out` go to test
   only (leave-one-site-out);
4. write the split CSV (with `source`, `site`, `tumour_type` columns) and its JSON sidecar with the counts.
"""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfedpure.config import CLASS_NAMES, DEFAULT_ALPHA, DEFAULT_HOSPITALS, DEFAULT_SEED, IMAGE_SIZE, TUMOUR_TYPES
from medfedpure.data import (
    CROP_THRESHOLD,
    DEFAULT_MIN_TRAIN,
    DEFAULT_MIN_VAL,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    NEAR_THRESHOLD,
    SOURCE_COLUMNS,
    DataError,
    ScanRecord,
    SplitRow,
    _counts,
    _meta_path,
    file_sha256,
    _r6,
    _union_find,
    find_duplicate_groups,
    list_labelled,
    make_split,
    read_folder,
    slice_path,
    write_split,
)

__all__ = ["Source", "SourceRecord", "load_sources", "parse_class_target", "list_sources", "group_sources",
           "split_sources", "check_sources", "source_counts", "DEFAULT_SOURCES"]  # fmt: skip

DEFAULT_SOURCES = Path(__file__).resolve().parent.parent / "sources.toml"
GROUP_KINDS = ("duplicates", "patient")
HOSPITAL_KINDS = ("partition", "site")
_BLANK_STD = 1.0 / 255.0  # an image this flat (an all-black slice) is no scan's copy, whatever its bytes


@dataclass(frozen=True)
class Source:
    name: str
    folder: str
    classes: dict[str, tuple[int, str]]  # sub-folder -> (binary label, tumour type or "")
    group: str = "duplicates"
    duplicates_file: str = ""
    labels_file: str = ""
    group_column: str = ""
    site_column: str = ""
    hospitals: str = "partition"
    # 3-D volumes (NIfTI): each file gives this many slices that show brain in every plane of `planes`
    slices_per_plane: int = 0
    planes: tuple[str, ...] = ()


def parse_class_target(text: str) -> tuple[int, str]:
    """"no_tumour" -> (0, ""), "tumour" -> (1, ""), "tumour:glioma" -> (1, "glioma")."""
    name, _, kind = str(text).strip().partition(":")
    if name not in CLASS_NAMES:
        raise ValueError(f"class {text!r}: expected no_tumour, tumour or tumour:<type>")
    if kind and (name != "tumour" or kind not in TUMOUR_TYPES):
        raise ValueError(f"class {text!r}: a tumour type is one of {', '.join(TUMOUR_TYPES)}, after 'tumour:'")
    return CLASS_NAMES.index(name), kind


def _source(entry: Mapping) -> Source:
    known = {"name", "folder", "classes", "group", "duplicates_file", "labels_file", "group_column",
             "site_column", "hospitals", "slices_per_plane", "planes"}  # fmt: skip
    unknown = set(entry) - known
    name = entry.get("name", "?")
    if unknown:
        raise ValueError(f"source {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    if not entry.get("name") or not entry.get("folder") or not entry.get("classes"):
        raise ValueError(f"source {name!r}: name, folder and classes are required")
    src = Source(
        name=str(entry["name"]), folder=str(entry["folder"]),
        classes={str(k): parse_class_target(v) for k, v in dict(entry["classes"]).items()},
        group=str(entry.get("group", "duplicates")), duplicates_file=str(entry.get("duplicates_file", "")),
        labels_file=str(entry.get("labels_file", "")), group_column=str(entry.get("group_column", "")),
        site_column=str(entry.get("site_column", "")), hospitals=str(entry.get("hospitals", "partition")),
        slices_per_plane=int(entry.get("slices_per_plane", 0)), planes=tuple(entry.get("planes", ())),
    )  # fmt: skip
    from medfedpure.nifti import PLANES

    if src.slices_per_plane and not src.planes:
        src = Source(**{**src.__dict__, "planes": PLANES})
    bad = set(src.planes) - set(PLANES)
    if bad:
        raise ValueError(f"source {src.name!r}: unknown plane(s) {', '.join(sorted(bad))}; choose from {PLANES}")
    if src.group not in GROUP_KINDS:
        raise ValueError(f"source {src.name!r}: group must be one of {', '.join(GROUP_KINDS)}")
    if src.hospitals not in HOSPITAL_KINDS:
        raise ValueError(f"source {src.name!r}: hospitals must be one of {', '.join(HOSPITAL_KINDS)}")
    if src.group == "patient" and not (src.labels_file and src.group_column):
        raise ValueError(f"source {src.name!r}: group = \"patient\" needs labels_file and group_column")
    if src.hospitals == "site" and not (src.labels_file and src.site_column):
        raise ValueError(f"source {src.name!r}: hospitals = \"site\" needs labels_file and site_column")
    return src


def load_sources(path=DEFAULT_SOURCES, only: Sequence[str] | None = None) -> list[Source]:
    """Read a sources declaration (TOML, `[[source]]` tables); `only` keeps the named sources, in file order."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"sources file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path.name}: not valid TOML ({exc})") from None
    try:
        sources = [_source(e) for e in doc.get("source", [])]
    except ValueError as exc:
        raise DataError(f"{path.name}: {exc}") from None
    if not sources:
        raise DataError(f"{path.name}: no [[source]] tables")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"{path.name}: source names must be unique")
    if only:
        missing = set(only) - set(names)
        if missing:
            raise DataError(f"unknown source(s) {', '.join(sorted(missing))}; {path.name} declares {', '.join(names)}")
        sources = [s for s in sources if s.name in only]
    return sources


# ---------------------------------------------------------------------------------------------------------
# listing


@dataclass(frozen=True)
class SourceRecord:
    path: str  # relative to the data root: <source folder>/<path inside the source>
    label: int
    tumour_type: str
    source: str
    site: str  # "" unless the source has a site column
    patient: str  # "" unless the source groups by patient


def _read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _labels_table(root: Path, src: Source) -> dict[str, dict[str, str]]:
    if not src.labels_file:
        return {}
    path = root / src.folder / src.labels_file
    if not path.is_file():
        raise DataError(f"source {src.name!r}: labels file {src.labels_file} not found in {src.folder}")
    rows = _read_table(path)
    for col in (src.group_column, src.site_column):
        if col and rows and col not in rows[0]:
            raise DataError(f"source {src.name!r}: {src.labels_file} has no column {col!r}")
    return {r["path"]: r for r in rows}


def _slices_of(folder: Path, path: str, src: Source) -> list[str]:
    """A 2-D scan file lists itself; a volume of a volume source, its brain slices in every plane."""
    if not src.slices_per_plane:
        return [path]
    from medfedpure.io import _volume
    from medfedpure.nifti import NiftiError, brain_slices

    try:
        volume = _volume((folder / path).read_bytes())
    except (OSError, NiftiError) as exc:
        raise DataError(f"source {src.name!r}: {path} cannot be read as a volume ({exc})") from None
    return [slice_path(path, plane, i) for plane in src.planes
            for i in brain_slices(volume, plane, src.slices_per_plane)]


def list_sources(root, sources: Sequence[Source]) -> list[SourceRecord]:
    """Every labelled scan of every source, sorted by path (relative to `root`)."""
    root = Path(root)
    out: list[SourceRecord] = []
    for src in sources:
        folder = root / src.folder
        table = _labels_table(root, src)
        for sub, (label, kind) in src.classes.items():
            for rec in list_labelled(folder, {sub: label}):
                info = table.get(rec.path, {})
                if table and not info:
                    raise DataError(f"source {src.name!r}: {rec.path} is not in {src.labels_file}")
                for path in _slices_of(folder, rec.path, src):
                    out.append(SourceRecord(
                        path=f"{src.folder.rstrip('/')}/{path}", label=label, tumour_type=kind, source=src.name,
                        site=info.get(src.site_column, "") if src.site_column else "",
                        patient=info.get(src.group_column, "") if src.group == "patient" else "",
                    ))  # fmt: skip
    return sorted(out, key=lambda r: r.path)


# ---------------------------------------------------------------------------------------------------------
# grouping


@dataclass
class SourceGroups:
    group: np.ndarray  # int64 (N,)
    computed_links: int  # exact / near-copy links found by comparing pixels (all sources together)
    table_links: int  # links from the sources' own duplicate tables
    cross_source_groups: int  # groups holding scans of more than one source
    blank: int  # flat images left out of copy detection


def group_sources(root, sources: Sequence[Source], records: Sequence[SourceRecord], images: np.ndarray,
                  sha256: Sequence[str], *, threshold: float = NEAR_THRESHOLD,
                  crop_threshold: float | None = CROP_THRESHOLD) -> SourceGroups:
    """Groups over all sources: computed copies + duplicate tables + patients (union-find over every link).

    Within a source grouped by patient, pixel links are ignored: neighbouring slices of one patient are
    grouped by the patient already, and look-alike slices of different patients (near-empty top slices) are
    different people. Flat images (all black) take part in no pixel or byte link.
    """
    root = Path(root)
    n = len(records)
    flat = images.reshape(n, -1).std(axis=1) < _BLANK_STD * 255 if n else np.zeros(0, bool)
    shas = [("" if f else h) for h, f in zip(sha256, flat)]
    dups = find_duplicate_groups(images, shas, threshold=threshold, crop_threshold=crop_threshold, valid=~flat)
    by_name = {s.name: s for s in sources}
    patient_src = np.array([by_name[r.source].group == "patient" for r in records], dtype=bool)
    src_of = np.array([r.source for r in records])
    pairs = dups.pairs
    if len(pairs):
        same_patient_source = patient_src[pairs[:, 0]] & patient_src[pairs[:, 1]] & (
            src_of[pairs[:, 0]] == src_of[pairs[:, 1]])
        pairs = pairs[~same_patient_source]
    links = [pairs]
    index = {r.path: i for i, r in enumerate(records)}
    table_links = 0
    for src in sources:
        if src.duplicates_file and (root / src.folder / src.duplicates_file).is_file():
            for row in _read_table(root / src.folder / src.duplicates_file):
                a = index.get(f"{src.folder}/{row['path_a']}")
                b = index.get(f"{src.folder}/{row['path_b']}")
                if a is not None and b is not None:  # rows naming unlisted files (Br35H pred/) are skipped
                    links.append(np.array([[min(a, b), max(a, b)]], dtype=np.int64))
                    table_links += 1
    first_of: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        if r.patient:
            j = first_of.setdefault((r.source, r.patient), i)
            if j != i:
                links.append(np.array([[j, i]], dtype=np.int64))
    allp = np.concatenate(links) if links else np.zeros((0, 2), np.int64)
    group = _union_find(n, allp)
    cross = 0
    for g in np.unique(group):
        if len(set(src_of[group == g].tolist())) > 1:
            cross += 1
    return SourceGroups(group, int(len(pairs)), table_links, cross, int(flat.sum()))


# ---------------------------------------------------------------------------------------------------------
# split


def _site_hospitals(sources: Sequence[Source], records: Sequence[SourceRecord], hold_out: set[tuple[str, str]],
                    first_id: int) -> dict[tuple[str, str], int]:
    sites = sorted({(r.source, r.site) for r in records if r.site and _kind(sources, r.source) == "site"})
    unknown = hold_out - set(sites)
    if unknown:
        named = ", ".join(f"{s}:{t}" for s, t in sorted(unknown))
        raise DataError(f"hold-out site(s) {named} not found; sites: {', '.join(f'{s}:{t}' for s, t in sites)}")
    kept = [s for s in sites if s not in hold_out]
    return {s: first_id + i for i, s in enumerate(kept)}


def _kind(sources: Sequence[Source], name: str) -> str:
    return next(s.hospitals for s in sources if s.name == name)


def _n_sites(sources: Sequence[Source], records: Sequence[SourceRecord]) -> int:
    return len({(r.source, r.site) for r in records if r.site and _kind(sources, r.source) == "site"})


def assign_splits(sources: Sequence[Source], records: Sequence[SourceRecord], group: np.ndarray, *,
                  seed: int = DEFAULT_SEED, hospitals: int = DEFAULT_HOSPITALS, alpha: float = DEFAULT_ALPHA,
                  test_fraction: float = DEFAULT_TEST_FRACTION, val_fraction: float = DEFAULT_VAL_FRACTION,
                  min_train: int = DEFAULT_MIN_TRAIN, min_val: int = DEFAULT_MIN_VAL,
                  hold_out: Sequence[tuple[str, str]] = (),
                  fixed: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> (split per record, hospital per record, info). A group follows the unit of its first record.

    `fixed`: per record, a split it keeps ("" = choose), e.g. Br35H's published split (see `keep_splits`).
    """
    n = len(records)
    hold = set(hold_out)
    n_sites = _n_sites(sources, records)
    n_part = hospitals - n_sites
    if n_part < 1 and any(_kind(sources, r.source) == "partition" for r in records):
        raise DataError(f"{hospitals} hospitals leave none for the partitioned sources ({n_sites} real sites)")
    site_ids = _site_hospitals(sources, records, hold, max(n_part, 0))
    # The unit of a group: ("partition",) or ("site", source, site), from the group's first record.
    unit_of_group: dict[int, tuple] = {}
    for r, g in zip(records, group.tolist()):
        if g not in unit_of_group:
            unit_of_group[g] = (("site", r.source, r.site) if _kind(sources, r.source) == "site"
                                else ("partition",))  # fmt: skip
    split = np.array(["train"] * n, dtype=object)
    hosp = np.full(n, -1, dtype=np.int64)
    units = sorted(set(unit_of_group.values()))
    info: dict = {"partition_hospitals": n_part, "sites": {f"{k[0]}:{k[1]}": v for k, v in site_ids.items()},
                  "held_out": sorted(f"{s}:{t}" for s, t in hold)}  # fmt: skip
    for k, unit in enumerate(units):
        rows = np.array([i for i, g in enumerate(group.tolist()) if unit_of_group[g] == unit], dtype=np.int64)
        unit_seed = [int(seed), k]
        if unit[0] == "site" and (unit[1], unit[2]) in hold:
            split[rows] = "test"
            continue
        strata_names = sorted({(records[i].source, records[i].label) for i in rows})
        strata = np.array([strata_names.index((records[i].source, records[i].label)) for i in rows])
        n_h = n_part if unit[0] == "partition" else 1
        part = make_split(strata, group[rows], seed=int(np.random.SeedSequence(unit_seed).generate_state(1)[0]),
                          test_fraction=test_fraction, val_fraction=val_fraction, hospitals=n_h,
                          alpha=alpha if n_h > 1 else 1.0, min_train=min_train, min_val=min_val,
                          fixed=None if fixed is None else [fixed[i] for i in rows])  # fmt: skip
        split[rows] = part.split
        offset = 0 if unit[0] == "partition" else site_ids[(unit[1], unit[2])]
        hosp[rows] = np.where(part.hospital >= 0, part.hospital + offset, -1)
        if unit[0] == "partition":
            info["dirichlet_strata"] = [f"{s}:{CLASS_NAMES[c]}" for s, c in strata_names]
            info["dirichlet_proportions"] = [[_r6(v) for v in row] for row in part.proportions.tolist()]
    return split.astype(str), hosp, info


def keep_splits(sources: Sequence[Source], records: Sequence[SourceRecord],
                keep: Mapping[str, Path]) -> list[str] | None:
    """Per record: the split it keeps from `keep[source]` ("" where none), checking every file's sha256 there."""
    if not keep:
        return None
    from medfedpure.data import read_split

    folder = {s.name: s.folder.rstrip("/") for s in sources}
    unknown = set(keep) - set(folder)
    if unknown:
        raise DataError(f"--keep-split names unknown source(s): {', '.join(sorted(unknown))}")
    kept: dict[str, str] = {}
    for name, path in keep.items():
        for r in read_split(path):
            # a single-source split lists paths inside the source's folder; a multi-source one, from the data root
            full = r.path if r.path.startswith(folder[name] + "/") else f"{folder[name]}/{r.path}"
            kept[full] = "test" if r.split == "test" else "notest"  # val is drawn anew
    missing = [r.path for r in records if r.source in keep and r.path not in kept]
    if missing:
        raise DataError(f"{len(missing)} scan(s) of {', '.join(keep)} are not in the kept split, e.g. {missing[0]}")
    return [kept.get(r.path, "") if r.source in keep else "" for r in records]


def source_counts(rows: Sequence[SplitRow]) -> dict:
    """{"source": {source: {split: {class: n}}}, "hospital": {h: {source: {split: {class: n}}}}}."""
    by_src: dict = {}
    by_h: dict = {}
    for r in rows:
        c = CLASS_NAMES[r.label]
        d = by_src.setdefault(r.source, {}).setdefault(r.split, {})
        d[c] = d.get(c, 0) + 1
        if r.hospital >= 0:
            e = by_h.setdefault(str(r.hospital), {}).setdefault(r.source, {}).setdefault(r.split, {})
            e[c] = e.get(c, 0) + 1
    types: dict = {}
    for r in rows:
        if r.tumour_type:
            t = types.setdefault(r.split, {})
            t[r.tumour_type] = t.get(r.tumour_type, 0) + 1
    return {"source": by_src, "hospital": dict(sorted(by_h.items(), key=lambda kv: int(kv[0]))), "tumour_type": types}


@dataclass
class SourceSplit:
    rows: list[SplitRow]
    meta: dict
    csv_path: Path
    json_path: Path
    groups: SourceGroups = field(repr=False)


def _read_all(root: Path, records: Sequence[SourceRecord], size: int):
    return read_folder(root, [ScanRecord(r.path, r.label) for r in records], size=size)


def split_sources(root, sources: Sequence[Source], out_csv, *, seed: int = DEFAULT_SEED,
                  hospitals: int = DEFAULT_HOSPITALS, alpha: float = DEFAULT_ALPHA,
                  test_fraction: float = DEFAULT_TEST_FRACTION, val_fraction: float = DEFAULT_VAL_FRACTION,
                  min_train: int = DEFAULT_MIN_TRAIN, min_val: int = DEFAULT_MIN_VAL,
                  threshold: float = NEAR_THRESHOLD, crop_threshold: float | None = CROP_THRESHOLD,
                  hold_out: Sequence[tuple[str, str]] = (), size: int = IMAGE_SIZE,
                  keep: Mapping[str, Path] | None = None) -> SourceSplit:
    """List, read, group and split every source; write `out_csv` (SOURCE_COLUMNS) and its JSON sidecar.

    `keep`: source name -> an earlier single-source split CSV of it whose train+val / test assignment its scans
    keep (hospitals are drawn anew). The shipped split keeps Br35H's own split (`splits/br35h.csv`), so models
    trained on Br35H alone never saw a scan that is now a test scan, and can be compared or warm-started.
    """
    root = Path(root)
    records = list_sources(root, sources)
    if not records:
        raise DataError(f"no labelled scans in the sources under {root}")
    scan = _read_all(root, records, size)
    if scan.errors:
        listed = "; ".join(list(scan.errors.values())[:5])
        raise DataError(f"{len(scan.errors)} file(s) cannot be read: {listed}. Run `data check`.")
    groups = group_sources(root, sources, records, scan.images, scan.sha256, threshold=threshold,
                           crop_threshold=crop_threshold)  # fmt: skip
    fixed = keep_splits(sources, records, keep or {})
    split, hosp, info = assign_splits(sources, records, groups.group, seed=seed, hospitals=hospitals, alpha=alpha,
                                      test_fraction=test_fraction, val_fraction=val_fraction,
                                      min_train=min_train, min_val=min_val, hold_out=hold_out,
                                      fixed=fixed)  # fmt: skip
    if keep:
        info["kept_splits"] = {name: {"csv": Path(path).name, "sha256": file_sha256(path)}
                               for name, path in sorted(keep.items())}
    rows = [SplitRow(r.path, h, r.label, str(s), int(k), int(g), r.source, r.site, r.tumour_type)
            for r, h, s, k, g in zip(records, scan.sha256, split, hosp, groups.group)]  # fmt: skip
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    digest = write_split(rows, out_csv)
    n_hosp = int(hosp.max()) + 1 if (hosp >= 0).any() else 0
    meta = {
        "format": 2,
        "csv": out_csv.name,
        "csv_sha256": digest,
        "columns": list(SOURCE_COLUMNS),
        "classes": {"0": "no_tumour", "1": "tumour"},
        "class_names": {str(i): c for i, c in enumerate(CLASS_NAMES)},
        "tumour_types": list(TUMOUR_TYPES),
        "sources": [{"name": s.name, "folder": s.folder, "group": s.group, "hospitals": s.hospitals,
                     "classes": {k: (CLASS_NAMES[v[0]] + (":" + v[1] if v[1] else "")) for k, v in s.classes.items()}}
                    for s in sources],  # fmt: skip
        "seed": int(seed), "hospitals": n_hosp, "alpha": _r6(alpha), "test_fraction": _r6(test_fraction),
        "val_fraction": _r6(val_fraction), "min_train": int(min_train), "min_val": int(min_val),
        "image_size": int(size), **info,
        "duplicates": {"method": "sha256 + Pearson correlation of 32x32 thumbnails (padded image and bounding box), "
                                 "max over flips, across all sources; the sources' duplicate tables; patients",
                       "threshold": _r6(threshold),
                       "crop_threshold": None if crop_threshold is None else _r6(crop_threshold),
                       "computed_links": groups.computed_links, "table_links": groups.table_links,
                       "groups": int(groups.group.max()) + 1, "cross_source_groups": groups.cross_source_groups,
                       "flat_images": groups.blank},  # fmt: skip
        "counts": _counts(rows),
        "source_counts": source_counts(rows),
        "shift": None,
    }
    json_path = _meta_path(out_csv)
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    return SourceSplit(rows, meta, out_csv, json_path, groups)


def parse_hold_out(items: Sequence[str]) -> list[tuple[str, str]]:
    """["tcga_lgg_flair:HT"] -> [("tcga_lgg_flair", "HT")]."""
    out = []
    for item in items:
        src, sep, site = item.partition(":")
        if not sep or not src or not site:
            raise ValueError(f"bad hold-out {item!r}: expected SOURCE:SITE, e.g. tcga_lgg_flair:HT")
        out.append((src, site))
    return out


# ---------------------------------------------------------------------------------------------------------
# check


@dataclass
class SourceCheck:
    n_files: int
    counts: dict  # source -> class -> readable files
    errors: dict[str, str]
    groups: int
    cross_source_groups: list[list[str]]  # groups holding scans of several sources (copies across sources)
    mixed_label_groups: list[list[str]]


def check_sources(root, sources: Sequence[Source], size: int = IMAGE_SIZE) -> SourceCheck:
    """Read every file of every source; report unreadable files, cross-source copies and label conflicts."""
    root = Path(root)
    records = list_sources(root, sources)
    scan = _read_all(root, records, size)
    ok = scan.readable
    keep = [i for i in range(len(records)) if ok[i]]
    recs = [records[i] for i in keep]
    groups = group_sources(root, sources, recs, scan.images[keep], [scan.sha256[i] for i in keep])
    counts: dict = {}
    for r in recs:
        c = counts.setdefault(r.source, {})
        key = CLASS_NAMES[r.label] + (":" + r.tumour_type if r.tumour_type else "")
        c[key] = c.get(key, 0) + 1
    cross, mixed = [], []
    for g in np.unique(groups.group):
        members = [recs[i] for i in np.flatnonzero(groups.group == g)]
        if len({m.source for m in members}) > 1:
            cross.append([m.path for m in members])
        if len({m.label for m in members}) > 1:
            mixed.append([m.path for m in members])
    return SourceCheck(len(records), counts, dict(scan.errors), int(groups.group.max()) + 1 if len(recs) else 0,
                       cross, mixed)


# ---------------------------------------------------------------------------------------------------------
# any labelled folder (external test sets): folder names -> decision classes

# Folder names that mean one class in common public layouts (Br35H yes/no; the four-class Kaggle layout).
KNOWN_FOLDERS = {
    "no": "no_tumour", "notumor": "no_tumour", "no_tumor": "no_tumour", "no_tumour": "no_tumour",
    "notumour": "no_tumour", "healthy": "no_tumour", "normal": "no_tumour",
    "yes": "tumour", "tumor": "tumour", "tumour": "tumour",
    "glioma": "tumour:glioma", "glioma_tumor": "tumour:glioma", "meningioma": "tumour:meningioma",
    "meningioma_tumor": "tumour:meningioma", "pituitary": "tumour:pituitary", "pituitary_tumor": "tumour:pituitary",
}


def parse_class_map(text: str) -> dict[str, tuple[int, str]]:
    """"glioma,meningioma,pituitary=tumour notumor=no_tumour" -> {folder: (label, type)}.

    Items are separated by spaces or semicolons; each is FOLDER[,FOLDER...]=CLASS with CLASS no_tumour, tumour or
    tumour:<type>. A folder that is itself a tumour type (glioma, ...) mapped to plain "tumour" keeps its type.
    The older form "no=0,yes=1" (folder=index) is accepted too.
    """
    text = text.strip()
    if text and all(p.partition("=")[2].strip().isdigit() for p in text.split(",") if p.strip()):
        from medfedpure.data import parse_classes

        return {k: (v, "") for k, v in parse_classes(text).items()}
    out: dict[str, tuple[int, str]] = {}
    for item in text.replace(";", " ").split():
        folders, sep, target = item.partition("=")
        if not sep or not folders or not target:
            raise ValueError(f"bad class mapping {item!r}: expected FOLDER[,FOLDER]=CLASS, e.g. notumor=no_tumour")
        label, kind = parse_class_target(target)
        for folder in (f.strip() for f in folders.split(",") if f.strip()):
            if folder in out:
                raise ValueError(f"class folder {folder!r} given twice")
            leaf = folder.rstrip("/").rsplit("/", 1)[-1].lower()
            out[folder] = (label, kind or (leaf if label == 1 and leaf in TUMOUR_TYPES else ""))
    if not out:
        raise ValueError("empty class mapping")
    return out


def detect_class_map(root) -> dict[str, tuple[int, str]]:
    """The class folders of a labelled folder in a known layout (yes/no, or glioma/meningioma/pituitary/notumor,
    possibly under one level such as Testing/); DataError listing what was found otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found: dict[str, tuple[int, str]] = {}
    for depth_one in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        key = depth_one.name.lower()
        if key in KNOWN_FOLDERS:
            found[depth_one.name] = parse_class_target(KNOWN_FOLDERS[key])
    if not found:  # one level down (Training/, Testing/)
        for sub in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
            key = sub.name.lower()
            if key in KNOWN_FOLDERS:
                found[sub.relative_to(root).as_posix()] = parse_class_target(KNOWN_FOLDERS[key])
    if not found:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"no known class folders in {root} (found: {', '.join(subs) or 'none'}); pass --classes, "
                        f"e.g. --classes 'glioma,meningioma,pituitary=tumour notumor=no_tumour'")
    return found
