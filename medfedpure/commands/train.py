"""`python -m medfedpure train classifier|mae|purifier|all --data DIR`: federated training with Flower."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CACHE_DIR = Path(".cache")


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Runs on Flower's simulation engine "
                              "(one virtual SuperNode per hospital); the same ClientApp/ServerApp run on the "
                              "deployment engine (see README).")
    p.add_argument("model", choices=["classifier", "mae", "purifier", "all"])
    p.add_argument("--data", required=True, help="scan folder (Br35H layout: yes/, no/), or with --sources the "
                   "folder that holds the declared sources")
    p.add_argument("--sources", help="sources declaration (TOML; the shipped models: sources.toml)")
    p.add_argument("--split", help="split CSV (default: a new group-aware split of --data, written under .cache/)")
    p.add_argument("--hospitals", type=int, default=None, help="hospitals of a new split (default 10; with --split, "
                   "the split's own)")
    p.add_argument("--cache", help="preprocessed cache .npz (built from --data and the split when missing)")
    p.add_argument("--out", default="runs", help="output folder; each model goes to OUT/<model>/ (default: runs)")
    p.add_argument("--rounds", type=int, help="federated rounds (default per model)")
    p.add_argument("--local-epochs", type=float, help="local epochs per round")
    p.add_argument("--mode", choices=["moe", "fedavg", "local"], help="classifier: personalised mixture (default), "
                   "FedAvg baseline, or local-only baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads per virtual hospital (default 1; hospitals run in parallel)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu or cuda")
    from medfedpure.federated.settings import PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="a named set of settings, e.g. br35h-paper (the Br35H-only "
                   "paper reproduction: with --data ../shared/data/br35h --split splits/br35h.csv)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any run setting, e.g. --set lr=0.002 --set 'model-config={\"width\": 64}'")
    p.set_defaults(run=run)


def default_split_path(data: str, sources: str | None, seed: int, hospitals: int = 10) -> Path:
    """Where a split made for this data folder (and sources file) lives: one per folder, never another's."""
    import hashlib

    key = str(Path(data).resolve())
    if sources:
        key += "|" + Path(sources).read_text(encoding="utf-8")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return DEFAULT_CACHE_DIR / f"split-{digest}-h{hospitals}-seed{seed}.csv"


def prepare_data(data: str, split: str | None, cache: str | None, seed: int,
                 sources: str | None = None, hospitals: int | None = None) -> tuple[Path, Path]:
    """The split CSV and its preprocessed cache, creating either when missing.

    Without `split`, the split is made of `data` itself (a new user's own folder gets a split of that folder).
    """
    from medfedpure import data as datamod

    from medfedpure.config import DEFAULT_HOSPITALS

    hospitals = hospitals or DEFAULT_HOSPITALS
    split_path = Path(split) if split else default_split_path(data, sources, seed, hospitals)
    if split and not split_path.exists():
        raise datamod.DataError(f"split file not found: {split_path}")
    if not split_path.exists():
        split_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"making a group-aware split of {data} -> {split_path} ...", flush=True)
        if sources:
            from medfedpure.sources import load_sources, split_sources

            split_sources(data, load_sources(sources), split_path, seed=seed, hospitals=hospitals)
        else:
            datamod.split_folder(data, split_path, seed=seed, hospitals=hospitals)
    cache_path = Path(cache) if cache else DEFAULT_CACHE_DIR / f"cache-{datamod.split_sha256(split_path)[:12]}.npz"
    if not cache_path.exists():
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the preprocessed cache {cache_path} ...", flush=True)
        datamod.build_cache(data, split_path, cache_path)
    return split_path, cache_path


def split_hospitals(split_path: Path) -> int:
    from medfedpure.data import read_split

    return max(r.hospital for r in read_split(split_path)) + 1


def run(args) -> int:
    from medfedpure.data import DataError
    from medfedpure.federated import settings as run_settings
    from medfedpure.federated.simulation import simulate

    try:
        split_path, cache_path = prepare_data(args.data, args.split, args.cache, args.seed, args.sources,
                                              args.hospitals)
    except DataError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    overrides: dict = {"data-path": str(cache_path.resolve()), "out-dir": args.out, "seed": args.seed,
                       "device": args.device, "num-hospitals": split_hospitals(split_path)}
    if args.rounds is not None:
        overrides["num-rounds"] = args.rounds
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs
    if args.threads is not None:
        overrides["client-threads"] = args.threads
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = run_settings.parse_value(value)
    kinds = ["classifier", "mae", "purifier"] if args.model == "all" else [args.model]
    try:
        for kind in kinds:
            run_settings.check_keys(kind, overrides)
    except ValueError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    for kind in kinds:
        extra = dict(overrides)
        if args.preset:
            extra = {**run_settings.preset(args.preset, kind), **extra}
        if kind == "classifier" and args.mode:
            extra["mode"] = args.mode
            if args.mode != "moe" and args.out == "runs":
                extra["out-dir"] = f"runs/{args.mode}"
        summary = simulate(kind, extra)
        out = Path(extra["out-dir"]) / kind
        (out / "split.csv").write_bytes(split_path.read_bytes())
        if split_path.with_suffix(".json").exists():  # the split's settings and counts travel with it
            (out / "split.json").write_bytes(split_path.with_suffix(".json").read_bytes())
        print(f"{kind}: trained in {summary['train_seconds']:.0f} s -> {out}", flush=True)
    return 0
