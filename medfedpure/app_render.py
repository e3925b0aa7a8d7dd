"""Rendering helpers for the demo app: pure functions from pipeline results to pictures, text and files.

Nothing here runs a model: every number comes from a `ScanResult` (or the arrays the caller passes in). Figures use
matplotlib's object API on the Agg canvas (no pyplot state), so concurrent requests do not share a figure.

- `error_overlay`      the MAE error map as a heat map over the scan
- `perturbation_image` / `perturbation_stats`   the attack's change, amplified, with its L-inf / L2 norms and PSNR
- `clean_percentile` / `percentile_phrase`      where a score falls among a hospital's clean validation scores
- `verdict`            one plain-language paragraph about a result
- `score_plot`         score vs threshold vs the clean-score distribution, as an RGB array
- `report_figure` / `write_report`   the downloadable PNG + PDF figure and JSON (no patient identifiers)
- `batch_rows` / `write_batch_csv`   the batch table
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np

__all__ = [
    "BATCH_COLUMNS", "DISCLAIMER", "batch_row", "clean_percentile", "error_overlay", "gray_rgb", "percentile_phrase",
    "perturbation_image", "perturbation_stats", "pretty", "report_figure", "scan_id", "score_plot", "timings_markdown",
    "jsonable", "verdict", "write_batch_csv", "write_report",
]

DISCLAIMER = "Research demo, not a medical device; not for diagnosis."
BATCH_COLUMNS = ["file", "scan_id", "frame", "prediction", "score", "threshold", "flagged", "t_star",
                 "final_prediction", "p_final", "error"]


# ------------------------------------------------------------------------------------------------ basics
def pretty(class_name: str | None) -> str:
    """'no_tumour' -> 'no tumour'."""
    return "n/a" if class_name is None else str(class_name).replace("_", " ")


def _u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8."""
    g = _u8(image)
    return np.repeat(g[..., None], 3, axis=2)


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def scan_id(image: np.ndarray) -> str:
    """A display name that identifies the picture, not the patient: 'scan-' + 8 hex digits of its pixels' sha256."""
    data = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    return "scan-" + hashlib.sha256(data.tobytes()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ overlays
def error_overlay(image: np.ndarray, error_map: np.ndarray, vmax: float | None = None, cmap: str = "inferno",
                  max_alpha: float = 0.75) -> np.ndarray:
    """The per-pixel reconstruction error as a heat map over the scan -> (H, W, 3) uint8.

    vmax: error mapped to the top of the colour scale (default: the map's 99.5th percentile). Each pixel's
    opacity grows with its error, so well-reconstructed regions show the scan underneath.
    """
    image = np.asarray(image, dtype=np.float32)
    err = np.abs(np.asarray(error_map, dtype=np.float32))
    if err.shape != image.shape:
        raise ValueError(f"error map {err.shape} and scan {image.shape} differ in shape")
    top = float(vmax) if vmax else float(np.percentile(err, 99.5))
    norm = np.clip(err / top, 0.0, 1.0) if top > 0 else np.zeros_like(err)
    heat = _cmap(cmap)(norm)[..., :3].astype(np.float32)
    alpha = (max_alpha * norm)[..., None]
    base = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    return _u8((1 - alpha) * base + alpha * heat)


def perturbation_stats(original: np.ndarray, adversarial: np.ndarray) -> dict:
    """L-inf and L2 norms of adversarial - original (pixel units in [0, 1]), MSE and PSNR in dB (inf if equal)."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(adversarial, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"original {a.shape} and adversarial {b.shape} differ in shape")
    delta = b - a
    mse = float(np.mean(delta**2))
    return {"linf": float(np.max(np.abs(delta))) if delta.size else 0.0, "l2": float(np.sqrt(np.sum(delta**2))),
            "mse": mse, "psnr_db": math.inf if mse == 0 else float(10 * np.log10(1.0 / mse))}


def perturbation_image(original: np.ndarray, adversarial: np.ndarray, scale: float | None = None,
                       cmap: str = "RdBu_r") -> tuple[np.ndarray, float]:
    """The perturbation amplified to the full colour range -> ((H, W, 3) uint8, amplification factor).

    +scale maps to full red, -scale to full blue, 0 to white; scale defaults to max|delta| (so even a tiny change
    is visible). The factor is 1/scale: how many times the change was magnified for display.
    """
    delta = np.asarray(adversarial, dtype=np.float32) - np.asarray(original, dtype=np.float32)
    scale = float(scale) if scale else float(np.max(np.abs(delta)))
    if scale <= 0:
        return _u8(_cmap(cmap)(np.full(delta.shape, 0.5))[..., :3]), 1.0
    rgb = _cmap(cmap)(np.clip(0.5 + delta / (2 * scale), 0.0, 1.0))[..., :3]
    return _u8(rgb), 1.0 / scale


# ------------------------------------------------------------------------------------------------ scores
def clean_percentile(score: float, quantiles) -> float:
    """Percent of the hospital's clean validation scores below `score`, interpolated between its quantiles.

    `quantiles`: the scores at evenly spaced levels 0, 1/(n-1), ..., 1 (MedFedPure stores 21: every 5%).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if q.size < 2 or not np.isfinite(score):
        return float("nan")
    levels = np.linspace(0.0, 100.0, q.size)
    q = np.maximum.accumulate(q)  # guard against rounding making them non-monotone
    if score <= q[0]:
        return 0.0
    if score >= q[-1]:
        return 100.0
    # np.interp on a flat run of quantiles returns its left end; take the right end there (score is above them)
    hi = int(np.searchsorted(q, score, side="right"))
    lo = hi - 1
    span = q[hi] - q[lo]
    return float(levels[lo] + (levels[hi] - levels[lo]) * ((score - q[lo]) / span if span > 0 else 1.0))


def percentile_phrase(score: float, quantiles) -> str:
    """'above every one of this hospital's clean calibration scans' / 'above about 87% of ...'."""
    p = clean_percentile(score, quantiles)
    if math.isnan(p):
        return "no clean-score distribution is stored for this hospital"
    if p >= 100.0:
        return "above every one of this hospital's clean calibration scans"
    if p <= 0.0:
        return "below every one of this hospital's clean calibration scans"
    return f"above about {p:.0f}% of this hospital's clean calibration scans"


def _fmt_score(x: float) -> str:
    return f"{x:.4g}"


def verdict(result, *, defence: bool = True, attack: str = "none", eps: float = 0.0,
            clean_prediction: str | None = None, quantiles=None) -> str:
    """A plain-language paragraph about one `ScanResult` (markdown)."""
    parts = []
    if attack != "none":
        atk = f"{attack.upper() if attack in ('fgsm', 'pgd') else attack} attack (eps {eps:.4g})"
        if clean_prediction is not None and clean_prediction != result.prediction:
            parts.append(f"The {atk} changed the classifier's answer from **{pretty(clean_prediction)}** to "
                         f"**{pretty(result.prediction)}**.")
        elif clean_prediction is not None:
            parts.append(f"The {atk} did not change the classifier's answer (**{pretty(result.prediction)}**).")
    where = f" ({percentile_phrase(result.score, quantiles)})" if quantiles is not None else ""
    if result.flagged:
        parts.append(f"**Flagged as suspicious**: detector score {_fmt_score(result.score)} > threshold "
                     f"{_fmt_score(result.threshold)}{where}.")
    else:
        parts.append(f"**Not flagged**: detector score {_fmt_score(result.score)} <= threshold "
                     f"{_fmt_score(result.threshold)}{where}.")
    if not defence:
        parts.append(f"Defence is off, so the answer is the classifier's own: **{pretty(result.final_prediction)}**.")
    elif result.purified is not None:
        why = "" if result.flagged else " (purification forced on)"
        if result.purified_prediction != result.prediction:
            change = (f"prediction changed from **{pretty(result.prediction)}** to "
                      f"**{pretty(result.purified_prediction)}**.")
        else:
            change = f"prediction unchanged (**{pretty(result.prediction)}**)."
        parts.append(f"Purified at t*={result.t_star}{why}; {change}")
    else:
        parts.append(f"Not purified; the answer is **{pretty(result.final_prediction)}**.")
    return " ".join(parts)


def timings_markdown(timings_ms: dict, device: str) -> str:
    rows = "".join(f"| {k.replace('_', ' ')} | {v:.1f} |\n" for k, v in timings_ms.items() if v is not None)
    return f"Device: **{device}**\n\n| stage | ms |\n|---|---|\n{rows}"


# ------------------------------------------------------------------------------------------------ figures
def _figure(width_in: float, height_in: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _draw_score(ax, quantiles, threshold: float, score: float, clean_score: float | None = None) -> None:
    q = np.asarray(quantiles, dtype=np.float64) if quantiles is not None else np.zeros(0)
    if q.size >= 2:
        ax.plot(q, np.linspace(0, 100, q.size), color="0.35", lw=1.5, label="clean scans (CDF)")
    ax.axvline(threshold, color="tab:orange", ls="--", lw=1.5, label=f"threshold {threshold:.4g}")
    if clean_score is not None:
        ax.axvline(clean_score, color="tab:green", lw=1.5, label=f"clean scan {clean_score:.4g}")
    ax.axvline(score, color="tab:red", lw=2.5, label=f"this scan {score:.4g}")
    values = [threshold, score] + ([clean_score] if clean_score is not None else []) + list(q)
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, 100)
    ax.set_xlabel("detector score (anomaly statistic of the MAE detector)")
    ax.set_ylabel("% of clean scans below")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)


def score_plot(quantiles, threshold: float, score: float, clean_score: float | None = None) -> np.ndarray:
    """The scan's detector score against the threshold and the hospital's clean-score CDF -> (H, W, 3) uint8."""
    fig = _figure(5.2, 2.6)
    ax = fig.add_axes((0.12, 0.2, 0.85, 0.72))
    _draw_score(ax, quantiles, threshold, score, clean_score)
    return _to_rgb(fig)


def report_figure(panels: dict, info: dict):
    """One analysis as a matplotlib Figure: six image panels, the score plot, probability bars and the verdict.

    panels: title -> (H, W) float image or (H, W, 3) uint8 (None: an empty 'not computed' panel), up to 6.
    info: keys name, verdict (plain text), class_names, probabilities, final_probabilities, score, threshold,
          quantiles, clean_score (optional), header (one line: model, hospital, attack), timings_ms, device.
    """
    fig = _figure(11.0, 10.0)
    fig.suptitle(f"MedFedPure analysis: {info.get('name', 'scan')}", fontsize=14, fontweight="bold", y=0.985)
    fig.text(0.5, 0.955, info.get("header", ""), ha="center", fontsize=8.5, color="0.25")
    items = list(panels.items())[:6]
    for i, (title, img) in enumerate(items):
        ax = fig.add_axes((0.03 + (i % 3) * 0.325, 0.63 - (i // 3) * 0.31, 0.29, 0.29))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        if img is None:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", color="0.5", transform=ax.transAxes)
            ax.set_facecolor("0.95")
        elif np.ndim(img) == 2:
            ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.asarray(img), interpolation="nearest")
    ax = fig.add_axes((0.07, 0.14, 0.45, 0.17))
    _draw_score(ax, info.get("quantiles"), float(info["threshold"]), float(info["score"]), info.get("clean_score"))
    ax = fig.add_axes((0.63, 0.14, 0.34, 0.17))
    names = [pretty(c) for c in info["class_names"]]
    y = np.arange(len(names))
    before = np.asarray(info["probabilities"], dtype=float)
    after = np.asarray(info["final_probabilities"], dtype=float)
    ax.barh(y + 0.2, before, height=0.38, color="0.6", label="before defence")
    ax.barh(y - 0.2, after, height=0.38, color="tab:blue", label="final (after defence)")
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    import textwrap

    text = textwrap.fill(info.get("verdict", ""), 150)
    fig.text(0.03, 0.085, text, fontsize=8.5, va="top", wrap=True)
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in (info.get("timings_ms") or {}).items())
    fig.text(0.03, 0.018, f"{DISCLAIMER}  Device: {info.get('device', '?')}.  {timings}", fontsize=7, color="0.3")
    return fig


def write_report(out_dir: str | Path, stem: str, panels: dict, info: dict, record: dict) -> list[Path]:
    """Write STEM.png, STEM.pdf (the report figure) and STEM.json (`record`) into out_dir -> their paths.

    Nothing identifying goes in: the caller passes a non-identifying stem and record; PDF metadata is reduced to a
    title naming the scan id.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = report_figure(panels, info)
    png, pdf, js = out / f"{stem}.png", out / f"{stem}.pdf", out / f"{stem}.json"
    fig.savefig(png, format="png", dpi=100)
    fig.savefig(pdf, format="pdf", metadata={"Title": f"MedFedPure analysis {stem}", "Author": None,
                                              "Subject": DISCLAIMER})
    js.write_text(json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return [png, pdf, js]


def jsonable(obj):
    """Floats that JSON cannot hold (inf, nan) become strings; numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------------ batch
def batch_row(file: str, result=None, *, error: str | None = None, frame=None, scan: str = "") -> dict:
    """One row of the batch table (BATCH_COLUMNS) from a ScanResult, or an error row."""
    row = dict.fromkeys(BATCH_COLUMNS, "")
    row.update(file=file, scan_id=scan, frame="" if frame is None else frame)
    if result is None:
        row["error"] = error or "failed"
        return row
    row.update(prediction=pretty(result.prediction), score=round(float(result.score), 6),
               threshold=round(float(result.threshold), 6), flagged=bool(result.flagged), t_star=int(result.t_star),
               final_prediction=pretty(result.final_prediction),
               p_final=round(float(max(result.final_probabilities)), 4), error="")
    return row


def write_batch_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=BATCH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path
