"""Time reading + preprocessing every file of a scan folder (Br35H: 3000 labelled + 60 pred = 3060 files).

    python benchmarks/bench_read.py [--data DIR] [--repeats 3] [--size 128]

Each repeat reads every file's bytes, hashes them (sha256) and preprocesses them with the one reader,
`medfedpure.io.read_scan` (grayscale, aspect kept, size x size), in one process: exactly what
`data split`, `data check` and `data cache` do. Prints the median wall time and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    from medfedpure.config import IMAGE_SIZE
    from medfedpure.data import list_labelled, list_unlabelled, read_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "br35h",
                        help="scan folder in the Br35H layout (default: ../shared/data/br35h)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help=f"output side (default {IMAGE_SIZE})")
    args = parser.parse_args(argv)

    records = list_labelled(args.data) + list_unlabelled(args.data)
    if not records:
        print(f"error: no scan files found in {args.data}", file=sys.stderr)
        return 2
    times, errors = [], 0
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        scan = read_folder(args.data, records, size=args.size)
        times.append(time.perf_counter() - t0)
        errors = len(scan.errors)
    median = statistics.median(times)
    print(f"files: {len(records)} ({errors} unreadable), size {args.size}, repeats {len(times)}")
    print(f"times (s): {', '.join(f'{t:.2f}' for t in times)}")
    print(f"median: {median:.2f} s ({1000 * median / len(records):.2f} ms per file, single process)")
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
