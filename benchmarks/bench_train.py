"""Wall time and peak memory of a federated training command, whole process tree included.

    python benchmarks/bench_train.py [--out runs/bench-train] [--data ../shared/data/br35h] [-- EXTRA TRAIN ARGS]

Runs `python -m medfedpure train classifier --data DATA --split pretrained/split.csv --out OUT` (the default
configuration unless extra arguments follow `--`) and samples, every `--every` seconds, the memory of the
command and of every process it started (Flower's simulation engine runs the hospitals in worker processes).
Memory is the sum of proportional set sizes (PSS: shared pages divided among the processes that share them, so
the sum is what the tree really occupies), falling back to RSS where /proc has no smaps_rollup. One JSON object
is printed: wall seconds, peak tree PSS and the largest single process, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        out = []
        for task in tasks:
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
        return out
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo.extend(_children(p))
    return seen


def _memory_kib(pid: int) -> int:
    """PSS of one process in KiB (RSS where smaps_rollup is missing); 0 once it has exited."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_tree_kib = self.peak_single_kib = self.max_processes = self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            sizes = [_memory_kib(p) for p in _tree(self.pid)]
            self.peak_tree_kib = max(self.peak_tree_kib, sum(sizes))
            self.peak_single_kib = max(self.peak_single_kib, max(sizes, default=0))
            self.max_processes = max(self.max_processes, len(sizes))
            self.samples += 1
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "br35h"))
    ap.add_argument("--out", default="runs/bench-train")
    ap.add_argument("--model", default="classifier", choices=("classifier", "mae", "purifier"))
    ap.add_argument("--every", type=float, default=1.0, help="sampling period in seconds")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    cmd = [sys.executable, "-m", "medfedpure", "train", args.model, "--data", args.data,
           "--split", str(ROOT / "pretrained" / "split.csv"), "--out", args.out, *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, args.every)
    sampler.start()
    _, err = proc.communicate()
    sampler.stop()
    wall = time.perf_counter() - start
    result = {
        "command": " ".join(["python", "-m", "medfedpure", "train", args.model, "--data", "DATA", "--split",
                             "pretrained/split.csv", "--out", args.out, *extra]),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_tree_pss_mib": round(sampler.peak_tree_kib / 1024, 1),
        "peak_single_process_mib": round(sampler.peak_single_kib / 1024, 1),
        "max_processes": sampler.max_processes,
        "samples": sampler.samples,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    if proc.returncode:
        result["stderr_tail"] = err[-2000:]
    print(json.dumps(result, indent=2))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
