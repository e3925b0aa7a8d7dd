"""FedAvg that survives bad hospitals: non-finite updates are rejected, wildly scaled ones too.

It also keeps every hospital's evaluation metrics per round, for the records and the accuracy plot.
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def update_norm(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> float:
    """L2 norm of (arrays - reference) over all floating-point arrays; inf if any value is not finite."""
    total = 0.0
    for key, arr in arrays.items():
        value = arr.numpy()
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if not np.all(np.isfinite(value)):
            return float("inf")
        ref = reference.get(key)
        diff = value - ref if ref is not None and ref.shape == value.shape else value
        total += float(np.sum(diff.astype(np.float64) ** 2))
    return total ** 0.5


def screen_updates(norms: list[float], max_ratio: float) -> list[bool]:
    """Accept finite updates whose norm is at most `max_ratio` times the median finite norm."""
    finite = [n for n in norms if np.isfinite(n)]
    if not finite:
        return [False] * len(norms)
    median = float(np.median(finite))
    return [bool(np.isfinite(n) and (median == 0 or n <= max_ratio * median)) for n in norms]


class RobustFedAvg(FedAvg):
    def __init__(self, *args, max_norm_ratio: float = 10.0, num_rounds: int = 1, round_offset: int = 0,
                 on_round_end=None, **kwargs):
        """num_rounds: the run's total; round_offset: rounds done before this start (a resumed run);
        on_round_end(round, arrays, strategy): called after each round's evaluation (the resume checkpoint)."""
        super().__init__(*args, **kwargs)
        self.max_norm_ratio = max_norm_ratio
        self.num_rounds = num_rounds
        self.round_offset = round_offset
        self.on_round_end = on_round_end
        self._reference: dict[str, np.ndarray] = {}
        self._latest: ArrayRecord | None = None
        self.records: list[dict] = []  # one row per (round, hospital, phase)
        self.rejected: list[dict] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._reference = {k: a.numpy() for k, a in arrays.items()}
        self._latest = arrays
        config["num-rounds"] = self.num_rounds
        config["round-offset"] = self.round_offset
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._latest = arrays
        config["round-offset"] = self.round_offset
        # the global test split once, at the end
        config["eval-test"] = server_round + self.round_offset == self.num_rounds
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        norms = [update_norm(m.content[self.arrayrecord_key], self._reference) for m in good]
        accepted = screen_updates(norms, self.max_norm_ratio)
        kept = []
        for msg, norm, ok in zip(good, norms, accepted):
            metrics = msg.content.metric_records.get("metrics", MetricRecord())
            hospital = int(metrics.get("hospital", -1))
            row = {"round": server_round + self.round_offset, "phase": "train", "hospital": hospital, "update_norm": norm,
                   **{k: v for k, v in metrics.items() if k != "hospital"}}
            if ok:
                kept.append(msg)
                self.records.append(row)
            else:
                log(WARNING, "Round %d: rejected the update of hospital %d (norm %s)", server_round, hospital, norm)
                self.rejected.append(row)
        dropped = len(replies) - len(good)
        if dropped:
            log(WARNING, "Round %d: %d hospital(s) dropped out; aggregating the others", server_round, dropped)
        if not kept:
            return None, None  # keeps the previous global model
        return super().aggregate_train(server_round, kept)

    def aggregate_evaluate(self, server_round: int, replies):
        replies = [m for m in replies if not m.has_error()]
        for msg in replies:
            metrics = msg.content.metric_records.get("metrics", MetricRecord())
            self.records.append({"round": server_round + self.round_offset, "phase": "evaluate", "hospital": int(metrics.get("hospital", -1)),
                                 **{k: v for k, v in metrics.items() if k != "hospital"}})
        result = super().aggregate_evaluate(server_round, replies)
        if self.on_round_end is not None and self._latest is not None:
            self.on_round_end(server_round + self.round_offset, self._latest, self)
        return result
