"""`python -m medfedpure train classifier|mae|purifier|all --data DIR`: federated training with Flower."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_CACHE_DIR = Path(".cache")


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text + " Runs on Flower's simulation engine "
                              "(one virtual SuperNode per hospital); the same ClientApp/ServerApp run on the "
                              "deployment engine (see README).")
    p.add_argument("model", choices=["classifier", "mae", "purifier", "all"])
    p.add_argument("--data", required=True, help="scan folder (Br35H layout: yes/, no/)")
    p.add_argument("--split", help="split CSV (default: pretrained/split.csv when present, else a new split)")
    p.add_argument("--cache", help="preprocessed cache .npz (built from --data and the split when missing)")
    p.add_argument("--out", default="runs", help="output folder; each model goes to OUT/<model>/ (default: runs)")
    p.add_argument("--rounds", type=int, help="federated rounds (default per model)")
    p.add_argument("--local-epochs", type=float, help="local epochs per round")
    p.add_argument("--mode", choices=["moe", "fedavg", "local"], help="classifier: personalised mixture (default), "
                   "FedAvg baseline, or local-only baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads per virtual hospital (default 1; hospitals run in parallel)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any run setting, e.g. --set lr=0.002 --set 'model-config={\"width\": 64}'")
    p.set_defaults(run=run)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def prepare_data(data: str, split: str | None, cache: str | None, seed: int) -> tuple[Path, Path]:
    """The split CSV and its preprocessed cache, creating either when missing."""
    from medfedpure import data as datamod
    from medfedpure.hub import BUNDLED_DIR

    split_path = Path(split) if split else BUNDLED_DIR / "split.csv"
    if not split_path.exists():
        split_path = DEFAULT_CACHE_DIR / f"split-seed{seed}.csv"
        if not split_path.exists():
            split_path.parent.mkdir(parents=True, exist_ok=True)
            datamod.write_split(datamod.make_split(data, seed=seed), split_path)
    cache_path = Path(cache) if cache else DEFAULT_CACHE_DIR / f"cache-{datamod.split_sha256(split_path)[:12]}.npz"
    if not cache_path.exists():
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the preprocessed cache {cache_path} ...", flush=True)
        datamod.build_cache(data, split_path, cache_path)
    return split_path, cache_path


def run(args) -> int:
    from medfedpure.federated.simulation import simulate

    split_path, cache_path = prepare_data(args.data, args.split, args.cache, args.seed)
    overrides: dict = {"data-path": str(cache_path.resolve()), "out-dir": args.out, "seed": args.seed,
                       "device": args.device}
    if args.rounds is not None:
        overrides["num-rounds"] = args.rounds
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs
    if args.threads is not None:
        overrides["client-threads"] = args.threads
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = _parse_value(value)
    kinds = ["classifier", "mae", "purifier"] if args.model == "all" else [args.model]
    for kind in kinds:
        extra = dict(overrides)
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
