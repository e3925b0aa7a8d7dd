"""Add purified copies (clean and PGD-attacked) of training scans to a cache, for fine-tuning the classifier.

    python scripts/purified_training_cache.py --model pretrained --cache .cache/multi2/cache.npz \
        --per-hospital 160 --out .cache/purified/cache.npz [--purifier runs/pur128/purifier]

Each hospital's copies come from its own training scans, attacked on its own personalised classifier and purified
at the depth the defence would choose (see medfedpure/purified_training.py). Validation and test rows are copied
unchanged. Then: `python -m medfedpure train classifier --cache OUT --split pretrained/split.csv
--set init-from=pretrained/classifier ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch

    from medfedpure.data import load_cache, save_cache
    from medfedpure.pipeline import MedFedPure
    from medfedpure.purified_training import extend_cache, purified_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained", help="the pipeline whose classifiers and detector are used")
    p.add_argument("--purifier", help="a purifier folder to use instead of the model's (e.g. runs/pur128/purifier)")
    p.add_argument("--cache", required=True, help="the training cache (built by `train` or `data cache`)")
    p.add_argument("--per-hospital", type=int, default=160, help="training scans copied per hospital")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    if args.purifier:
        pipe.use_purifier(args.purifier)
    cache = load_cache(args.cache)
    started = time.time()

    def progress(hospital, done, total):
        print(f"hospital {hospital}: {done}/{total} ({time.time() - started:.0f} s)", flush=True)

    extra = purified_rows(pipe, cache, args.per_hospital, seed=args.seed, pgd_steps=args.pgd_steps,
                          progress=progress)
    save_cache(extend_cache(cache, extra), args.out)
    meta = {"model": args.model, "purifier": args.purifier or f"{args.model}/purifier", "cache": args.cache,
            "per_hospital": args.per_hospital, "pgd_steps": args.pgd_steps, "seed": args.seed,
            "rows_added": len(extra), "seconds": round(time.time() - started, 1)}
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
