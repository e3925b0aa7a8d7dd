"""Per-round, per-hospital records of a federated run, and the accuracy-per-round plot (paper Fig. 3)."""

from __future__ import annotations

import json
from pathlib import Path


def portable(value):
    """`value` with every absolute path replaced by its file name, recursively.

    Records ship with the checkpoints: a training machine's directory layout is neither portable nor ours to
    publish (the data's identity is in the split's sha256, not in where it lay).
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or value[1:3] in (":\\", ":/")):
        return Path(value.replace("\\", "/")).name
    return value


def save_history(out_dir: Path, records: list[dict], kind: str, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps({"summary": portable(summary), "records": records}, indent=1,
                                                      sort_keys=True, default=float) + "\n")
    plot_history(records, out_dir / ("accuracy_per_round.png" if kind == "classifier" else "loss_per_round.png"),
                 metric="val-accuracy" if kind == "classifier" else "val-loss")


def plot_history(records: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("phase") == "evaluate" and metric in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for h in sorted({r["hospital"] for r in rows}):
        pts = sorted((r["round"], r[metric]) for r in rows if r["hospital"] == h)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1, label=f"hospital {h}")
    rounds = sorted({r["round"] for r in rows})
    weighted = []
    for rnd in rounds:
        rr = [r for r in rows if r["round"] == rnd]
        total = sum(r.get("num-examples", 1) for r in rr)
        weighted.append(sum(r[metric] * r.get("num-examples", 1) for r in rr) / max(total, 1))
    ax.plot(rounds, weighted, color="black", lw=2.5, label="weighted mean")
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("-", " ") + " (own held-out scans)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
