"""Centralised reference: the same classifier trained on every hospital's training scans pooled in one place.

Not a way to train MedFedPure (it breaks the federated premise); a ceiling for what the leak-free split allows.
If pooling all the data does not reach a clean accuracy, federation is not what stops the federated models.
The epoch is chosen on validation accuracy; the test split is read once per epoch for the record only.

    python scripts/centralised_ceiling.py --cache .cache/br35h-128.npz --epochs 40 --out reports/centralised_ceiling.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from medfedpure.data import load_cache
from medfedpure.federated import settings as run_settings
from medfedpure.federated import steps
from medfedpure.federated.task import build_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=".cache/br35h-128.npz", help="preprocessed cache (`medfedpure data cache`)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--class-balance", choices=("balanced", "none"), default="balanced")
    ap.add_argument("--model-config", default="{}", help="JSON overrides of the classifier config")
    ap.add_argument("--out", default="reports/centralised_ceiling.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cache = load_cache(args.cache)
    train_x, train_y = cache.select("train")
    val_x, val_y = cache.select("val")
    test_x, test_y = cache.select("test")
    # One global model, as the FedAvg baseline: the mixture with a single expert.
    config = {**run_settings.resolve("classifier", {"mode": "fedavg"})["model-config"], **json.loads(args.model_config)}
    model = build_model("classifier", config)
    weights = steps.balanced_class_weights(train_y, 2) if args.class_balance == "balanced" else None

    history, start = [], time.time()
    for epoch in range(args.epochs):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))  # cosine, as the federated runs
        fit = steps.train_classifier(model, train_x, train_y, epochs=1, lr=lr, batch_size=args.batch_size,
                                     seed=args.seed + epoch, class_weights=weights)
        val = steps.evaluate_classifier(model, val_x, val_y)["accuracy"]
        test = steps.evaluate_classifier(model, test_x, test_y)["accuracy"]
        history.append({"epoch": epoch + 1, "train-loss": fit["loss"], "val-accuracy": val, "test-accuracy": test})
        print(json.dumps(history[-1]), flush=True)
    seconds = time.time() - start

    best = max(history, key=lambda h: (h["val-accuracy"], h["epoch"]))
    last = history[-1]
    groups = {s: len(np.unique(cache.group[cache.split == s])) for s in ("train", "val", "test")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Centralised ceiling (not federated)\n\n"
        f"Command: `python scripts/centralised_ceiling.py --cache {args.cache} --epochs {args.epochs} "
        f"--class-balance {args.class_balance} --threads {args.threads}"
        + (f" --model-config '{args.model_config}'" if json.loads(args.model_config) else "")
        + f" --out {args.out}`; model config `{json.dumps(config)}`; seed {args.seed}; "
        f"{seconds / 60:.1f} min on this CPU ({args.threads} torch threads).\n\n"
        f"All {len(train_x)} training scans ({groups['train']} near-duplicate groups) pooled in one place, the same "
        f"augmentation, optimiser and cosine schedule as a federated round's local training. Validation: "
        f"{len(val_x)} scans ({groups['val']} groups); test: {len(test_x)} scans ({groups['test']} groups), sharing no "
        "group with training.\n\n"
        "| epoch | chosen by | validation accuracy | test accuracy |\n|---|---|---|---|\n"
        f"| {best['epoch']} | best validation accuracy | {100 * best['val-accuracy']:.2f}% | "
        f"{100 * best['test-accuracy']:.2f}% |\n"
        f"| {last['epoch']} | last epoch | {100 * last['val-accuracy']:.2f}% | {100 * last['test-accuracy']:.2f}% |\n"
        f"| - | best test accuracy of any epoch (optimistic: chosen on test) | - | "
        f"{100 * max(h['test-accuracy'] for h in history):.2f}% |\n\n"
        "Per epoch:\n\n```json\n" + json.dumps(history) + "\n```\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
