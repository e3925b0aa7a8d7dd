"""Fit the out-of-distribution check into a classifier folder (writes `ood.safetensors` beside its weights and `ood` into the operating settings of its config.json).

    python scripts/fit_ood.py --classifier runs/ft/classifier --cache .cache/cache-<split hash>.npz

Means and covariance are sums over every hospital's training features (the same sums each hospital could send
as sufficient statistics; run here on the pooled cache, not through Flower); the threshold comes from the
validation scans. The test split is never read. The statistics are rounded to float16, as they ship, before the
thresholds are set. The classifier's own weights are not rewritten (a checkpoint from before this file kept the
statistics in model.safetensors; they are ignored once the record names the file). Then `python
scripts/ood_report.py` measures it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch
    from safetensors.torch import save_file

    from medfedpure.checkpoint_format import read_config, write_config
    from medfedpure.data import load_cache
    from medfedpure.ood import LEVELS, OOD_FILE, fit_ood
    from medfedpure.pipeline import load_classifier

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True, type=Path, help="classifier run folder (config.json + weights)")
    p.add_argument("--cache", required=True, type=Path, help="the preprocessed cache of its split")
    p.add_argument("--quantile", type=float, default=0.999)
    p.add_argument("--margin", type=float, default=1.25)
    p.add_argument("--levels", default=",".join(LEVELS), help="feature levels (scripts/ood_candidates.py)")
    p.add_argument("--train-limit", type=int, default=3000, help="training scans fitted on (seeded subset)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _, _ = load_classifier(args.classifier)
    cache = load_cache(args.cache)
    import numpy as np

    train_x, train_y = cache.select("train")
    if len(train_x) > args.train_limit:
        pick = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(train_x), args.train_limit, replace=False)))
        train_x, train_y = train_x[pick], train_y[pick]
    val_x, _ = cache.select("val")
    check, record = fit_ood(model, train_x, train_y, val_x, quantile=args.quantile, margin=args.margin,
                            levels=tuple(args.levels.split(",")), dtype=torch.float16)
    save_file({k: v.to(torch.float16) for k, v in check.state_dict().items()}, str(args.classifier / OOD_FILE),
              metadata={"format": "pt"})
    record["file"] = OOD_FILE
    config = read_config(args.classifier, "classifier")
    config.operating["ood"] = record
    write_config(args.classifier, config)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
