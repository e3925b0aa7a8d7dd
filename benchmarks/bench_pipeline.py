"""Latency of one scan through the pipeline (batch 1), not flagged vs purified; medians over repeats.

    python benchmarks/bench_pipeline.py [--model pretrained] [--repeats 20] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from medfedpure.io import read_scan
from medfedpure.pipeline import MedFedPure

EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "examples" / "y1349.jpg"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = MedFedPure.from_pretrained(args.model, device=args.device)
    scan = read_scan(EXAMPLE)
    h = pipe.hospitals[0]
    out = {}
    for mode in ("never", "always"):  # "never": the path of a scan that is not flagged; "always": purified
        pipe.analyze([scan], hospital=h, purify=mode)  # warm-up
        times, stages = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            r = pipe.analyze([scan], hospital=h, purify=mode, seed=i)
            times.append((time.perf_counter() - t) * 1000)
            stages.append(r[0].timings_ms)
        out["not_flagged" if mode == "never" else "purified"] = {
            "median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "stage_medians_ms": {k: round(statistics.median(s[k] for s in stages), 1) for k in stages[0]},
        }
    out["machine"] = {"device": str(pipe.device), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                      "platform": platform.platform(), "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                      "load_average": os.getloadavg()}
    out["repeats"] = args.repeats
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
