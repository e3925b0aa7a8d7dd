"""Progress of a long evaluation: tqdm on a terminal, else a plain stderr line now and then (logs, CI)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """tqdm on a terminal, else a plain stderr line with counts, rate and ETA at most every `every` seconds."""

    def __init__(self, total: int, desc: str = "evaluate", enabled: bool = True, every: float = 30.0):
        self.total, self.desc, self.enabled, self.every = int(total), desc, enabled, every
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=desc, unit="scan", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter() - self.t0
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / now if now > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"[{self.desc}] {self.done}/{self.total} scan-evaluations, {now:.0f} s elapsed, "
                  f"ETA {eta:.0f} s {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
