"""`python -m medfedpure data split|check|cache`: split a scan folder, check it, cache its preprocessed scans."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from medfedpure.config import DEFAULT_ALPHA, DEFAULT_HOSPITALS, DEFAULT_SEED, IMAGE_SIZE
    from medfedpure.data import (
        CROP_THRESHOLD,
        DEFAULT_MIN_TRAIN,
        DEFAULT_MIN_VAL,
        DEFAULT_TEST_FRACTION,
        DEFAULT_VAL_FRACTION,
        NEAR_THRESHOLD,
    )

    parser = subparsers.add_parser(name, help=help_text, description=(
        "Work with a labelled scan folder: one sub-folder per class (Br35H: no/ = no tumour, yes/ = tumour; "
        "pred/ is unlabelled and never enters a split)."))
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(run=lambda args: (parser.print_help(), 1)[1])

    classes_help = "class folders and their indices, e.g. no=0,yes=1 (default: the Br35H layout)"

    p = sub.add_parser("split", help="write a group-aware train/val/test split with hospital partitions",
                       description=(
        "Group exact and near-duplicate scans (flipped, re-cropped, intensity-changed copies of one slice), "
        "split whole groups into test / val / train stratified by class, and partition train and val into "
        "hospitals with Dirichlet(alpha) label skew. Writes FILE (CSV: path,sha256,label,split,hospital,group) "
        "and FILE with a .json suffix (settings and counts). The same folder and seed give identical bytes."))
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="the scan folder")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="split CSV to write")
    p.add_argument("--hospitals", type=int, default=DEFAULT_HOSPITALS, metavar="N",
                   help=f"number of hospitals (default {DEFAULT_HOSPITALS})")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, metavar="A",
                   help=f"Dirichlet concentration of the label skew; large = near-uniform (default {DEFAULT_ALPHA})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S", help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, metavar="F",
                   help=f"share of each class held out as the global test split (default {DEFAULT_TEST_FRACTION})")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                   help=f"share of the rest used for validation (default {DEFAULT_VAL_FRACTION})")
    p.add_argument("--min-train", type=int, default=DEFAULT_MIN_TRAIN, metavar="N",
                   help=f"minimum train scans per hospital (default {DEFAULT_MIN_TRAIN})")
    p.add_argument("--min-val", type=int, default=DEFAULT_MIN_VAL, metavar="N",
                   help=f"minimum val scans per hospital (default {DEFAULT_MIN_VAL})")
    p.add_argument("--threshold", type=float, default=NEAR_THRESHOLD, metavar="R",
                   help=f"near-duplicate correlation threshold, whole image (default {NEAR_THRESHOLD})")
    p.add_argument("--crop-threshold", type=float, default=CROP_THRESHOLD, metavar="R",
                   help=f"near-duplicate correlation threshold, brain bounding box (default {CROP_THRESHOLD})")
    p.add_argument("--classes", default=None, metavar="MAP", help=classes_help)
    p.add_argument("--shift", action="store_true",
                   help="record a per-hospital acquisition shift (contrast, gamma, noise, blur) in the .json")
    p.add_argument("--size", type=int, default=IMAGE_SIZE, metavar="N",
                   help=f"image side used to find duplicates (default {IMAGE_SIZE})")
    _source_args(p)
    p.add_argument("--hold-out", action="append", default=[], metavar="SOURCE:SITE",
                   help="with --sources: put every scan of this site in the test split, in no hospital "
                        "(leave-one-site-out), e.g. tcga_lgg_flair:HT")
    p.add_argument("--keep-split", action="append", default=[], metavar="SOURCE=CSV",
                   help="with --sources: this source's scans keep their test / not-test side from an earlier split "
                        "of that source alone (the shipped split: br35h=splits/br35h.csv)")
    p.set_defaults(run=run_split)

    c = sub.add_parser("check", help="report unreadable files, duplicate groups and class counts",
                       description="Read every file; exit status 2 if any cannot be read (the others are still "
                                   "checked), else 0.")  # fmt: skip
    c.add_argument("--data", type=Path, required=True, metavar="DIR", help="the scan folder")
    c.add_argument("--classes", default=None, metavar="MAP", help=classes_help)
    c.add_argument("--size", type=int, default=IMAGE_SIZE, metavar="N", help=f"image side (default {IMAGE_SIZE})")
    _source_args(c)
    c.set_defaults(run=run_check)

    k = sub.add_parser("cache", help="save the preprocessed scans of a split as a compressed .npz",
                       description="Read every file of the split (its sha256 must match the CSV), preprocess it "
                                   "exactly as the app does and save images, labels, splits and hospitals.")
    k.add_argument("--data", type=Path, required=True, metavar="DIR", help="the scan folder")
    k.add_argument("--split", type=Path, required=True, metavar="FILE", help="split CSV from `data split`")
    k.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="cache file to write")
    k.add_argument("--size", type=int, default=IMAGE_SIZE, metavar="N", help=f"image side (default {IMAGE_SIZE})")
    k.set_defaults(run=run_cache)
    return parser


def _source_args(p) -> None:
    p.add_argument("--sources", type=Path, default=None, metavar="FILE",
                   help="several sources under --data, declared in FILE (the shipped models: sources.toml); "
                        "without it --data is one folder with one sub-folder per class")
    p.add_argument("--source", action="append", default=[], metavar="NAME",
                   help="with --sources: use only this source (repeatable; default: all declared)")


def _load_sources(args):
    from medfedpure.sources import load_sources

    return load_sources(args.sources, args.source or None)


def format_source_counts(meta: dict) -> str:
    """Counts per source x split x class, then per hospital (train / val per source and class)."""
    sc = meta["source_counts"]
    lines = [f"{'source':<20}{'split':<7}{'no_tumour':>10}{'tumour':>8}"]
    for src, splits in sc["source"].items():
        for split in ("train", "val", "test"):
            c = splits.get(split, {})
            lines.append(f"{src:<20}{split:<7}{c.get('no_tumour', 0):>10}{c.get('tumour', 0):>8}")
    lines += ["", f"{'hospital':<9}{'source':<20}{'train no/yes':>14}{'val no/yes':>12}"]
    for h, by_src in sc["hospital"].items():
        for src, splits in by_src.items():
            tr, va = splits.get("train", {}), splits.get("val", {})
            lines.append(f"{h:<9}{src:<20}{tr.get('no_tumour', 0):>7}/{tr.get('tumour', 0):<6}"
                         f"{va.get('no_tumour', 0):>6}/{va.get('tumour', 0):<5}")
    if sc.get("tumour_type"):
        lines.append("")
        lines.append("tumour types: " + "; ".join(f"{s} " + ", ".join(f"{k} {v}" for k, v in sorted(t.items()))
                                                  for s, t in sc["tumour_type"].items()))
    return "\n".join(lines)


def _classes(args) -> dict[str, int]:
    from medfedpure.config import BR35H_CLASS_DIRS
    from medfedpure.data import parse_classes

    return dict(BR35H_CLASS_DIRS) if args.classes is None else parse_classes(args.classes)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def format_counts(meta: dict) -> str:
    """A compact table of a split's counts (per split and per hospital, by class) from its sidecar meta."""
    names = {int(k): v for k, v in meta["class_names"].items()}
    labels = sorted(names)
    w = max(7, *(len(names[c]) for c in labels)) + 2
    cls = "".join(f"{names[c]:>{w}}" for c in labels)
    lines = [f"{'split':<10}{cls}{'total':>{w}}"]
    for split, counts in meta["counts"]["split"].items():
        vals = [counts.get(str(c), 0) for c in labels]
        lines.append(f"{split:<10}" + "".join(f"{v:>{w}}" for v in vals) + f"{sum(vals):>{w}}")
    lines += ["", f"{'hospital':<10}" + "".join(f"{'train ' + names[c]:>{w + 6}}" for c in labels)
              + "".join(f"{'val ' + names[c]:>{w + 4}}" for c in labels)]  # fmt: skip
    for h, splits in meta["counts"]["hospital"].items():
        row = f"{h:<10}"
        row += "".join(f"{splits.get('train', {}).get(str(c), 0):>{w + 6}}" for c in labels)
        row += "".join(f"{splits.get('val', {}).get(str(c), 0):>{w + 4}}" for c in labels)
        lines.append(row)
    return "\n".join(lines)


def run_split_sources(args: argparse.Namespace) -> int:
    from medfedpure.data import DataError
    from medfedpure.sources import parse_hold_out, split_sources

    try:
        res = split_sources(
            args.data, _load_sources(args), args.out, seed=args.seed, hospitals=args.hospitals, alpha=args.alpha,
            test_fraction=args.test_fraction, val_fraction=args.val_fraction, min_train=args.min_train,
            min_val=args.min_val, threshold=args.threshold, crop_threshold=args.crop_threshold,
            hold_out=parse_hold_out(args.hold_out), size=args.size,
            keep={k: Path(v) for k, _, v in (item.partition("=") for item in args.keep_split)},
        )  # fmt: skip
    except (DataError, ValueError) as exc:
        return _error(str(exc))
    d = res.meta["duplicates"]
    print(f"{len(res.rows)} labelled scans from {len(res.meta['sources'])} sources in {d['groups']} groups "
          f"({d['computed_links']} copy links found by pixels, {d['table_links']} from duplicate tables, "
          f"{d['cross_source_groups']} groups across sources); {res.meta['hospitals']} hospitals")
    print(format_source_counts(res.meta))
    print(f"wrote {res.csv_path} (sha256 {res.meta['csv_sha256'][:16]}...) and {res.json_path.name}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from medfedpure.data import DataError, split_folder

    if args.sources is not None:
        return run_split_sources(args)
    if args.hold_out or args.source:
        return _error("--hold-out and --source need --sources FILE")
    try:
        classes = _classes(args)
        res = split_folder(
            args.data, args.out, class_dirs=classes, seed=args.seed, test_fraction=args.test_fraction,
            val_fraction=args.val_fraction, hospitals=args.hospitals, alpha=args.alpha, min_train=args.min_train,
            min_val=args.min_val, threshold=args.threshold, crop_threshold=args.crop_threshold, shift=args.shift,
            size=args.size,
        )  # fmt: skip
    except (DataError, ValueError) as exc:
        return _error(str(exc))
    meta, d = res.meta, res.meta["duplicates"]
    print(f"{len(res.rows)} labelled scans in {d['groups']} duplicate groups (largest {d['largest_group']}, "
          f"{d['exact_copies']} exact copies, {d['mixed_label_groups']} groups with mixed labels)")  # fmt: skip
    print(format_counts(meta))
    print(f"wrote {res.csv_path} (sha256 {meta['csv_sha256'][:16]}...) and {res.json_path.name}")
    return 0


def run_check_sources(args: argparse.Namespace) -> int:
    from medfedpure.data import DataError
    from medfedpure.sources import check_sources

    try:
        rep = check_sources(args.data, _load_sources(args), size=args.size)
    except (DataError, ValueError) as exc:
        return _error(str(exc))
    for msg in rep.errors.values():
        print(f"unreadable: {msg}")
    for src, counts in rep.counts.items():
        print(f"{src}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"{rep.n_files} files in {rep.groups} groups; {len(rep.cross_source_groups)} groups hold copies across "
          f"sources")
    for group in rep.cross_source_groups[:20]:
        print(f"copies across sources: {', '.join(group[:6])}" + (" ..." if len(group) > 6 else ""))
    for group in rep.mixed_label_groups[:20]:
        print(f"label conflict: {', '.join(group[:6])}" + (" ..." if len(group) > 6 else ""))
    if rep.errors:
        print(f"{len(rep.errors)} of {rep.n_files} file(s) cannot be read", file=sys.stderr)
        return 2
    return 0


def run_check(args: argparse.Namespace) -> int:
    from medfedpure.data import DataError, check_folder

    if args.sources is not None:
        return run_check_sources(args)
    try:
        rep = check_folder(args.data, _classes(args), size=args.size)
    except (DataError, ValueError) as exc:
        return _error(str(exc))
    for msg in rep.errors.values():
        print(f"unreadable: {msg}")
    counts = ", ".join(f"{d}: {n}" for d, n in rep.class_counts.items())
    print(f"{rep.n_files} files ({rep.unlabelled} unlabelled); readable labelled per class: {counts}")
    print(f"duplicates: {rep.exact_copies} exact copies; {rep.groups_with_copies} groups of near/exact copies, "
          f"largest {rep.largest_group} files")  # fmt: skip
    for group in rep.mixed_label_groups:
        print(f"label conflict: copies of one scan in different classes: {', '.join(group[:6])}"
              + (" ..." if len(group) > 6 else ""))  # fmt: skip
    if rep.unlabelled_copies:
        more = " ..." if len(rep.unlabelled_copies) > 8 else ""
        print(f"{len(rep.unlabelled_copies)} unlabelled file(s) are copies of labelled scans (do not use them as "
              f"unseen data): {', '.join(rep.unlabelled_copies[:8])}{more}")
    if rep.errors:
        print(f"{len(rep.errors)} of {rep.n_files} file(s) cannot be read", file=sys.stderr)
        return 2
    return 0


def run_cache(args: argparse.Namespace) -> int:
    import time

    from medfedpure.data import DataError, build_cache

    t0 = time.perf_counter()
    try:
        cache = build_cache(args.data, args.split, args.out, size=args.size)
    except (DataError, ValueError, OSError) as exc:
        return _error(str(exc))
    mb = args.out.stat().st_size / 1e6
    parts = ", ".join(f"{s} {int((cache.split == s).sum())}" for s in ("train", "val", "test"))
    print(f"wrote {args.out}: {len(cache)} scans ({parts}), {cache.size}x{cache.size} uint8, {mb:.1f} MB "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0
