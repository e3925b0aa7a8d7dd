"""Rendering helpers for the demo app: pure functions from pipeline results to pictures, text and files.

Nothing here runs a model: every number comes from a `ScanResult` (or the arrays the caller passes in). The page's
figures are built with numpy and Pillow only (no matplotlib), so a full set costs milliseconds:

- colour maps are precomputed 256-entry look-up tables (matplotlib's ``inferno`` and ``RdBu_r``, stored below);
- scan panels are small PNGs (the 128 x 128 model input, scaled in the browser) inlined as data URIs in one HTML
  block, with the title above and a plain note below each (why a panel is empty, what a colour means);
- the detector-score plot is an inline SVG; the probabilities are HTML bars;
- the downloadable report is one Pillow-drawn raster saved as PNG and PDF, plus a JSON record.

- `error_overlay` / `perturbation_image` / `perturbation_stats`   heat map, amplified change, norms and PSNR
- `clean_percentile` / `percentile_phrase`      where a score falls among a hospital's clean calibration scores
- `verdict`            the plain-language answer: decision, tumour type, out-of-distribution check, why flagged
- `score_svg`, `bars_html`, `panels_html`       the page's figures
- `report_image` / `write_report`               the downloadable PNG + PDF + JSON (no patient identifiers)
- `batch_row` / `write_batch_csv` / `batch_status`  the batch table (scans named by a pixel hash, never a file name)
- `AnalysisView` -> `analysis_verdict`, `analysis_panels`, `analysis_html`, `analysis_record`, `report_info`:
  one analysis (the scan, the attack workflow's results, the request, the model's facts) as the page shows it
- `AnalyzeOutputs` / `BatchOutputs`             the "/analyze" and "/analyze_batch" outputs, named, in API order
- `meta_markdown` / `preview_html` / `clean_meta` / `model_record`   the upload preview and the report's facts
- `PAGE_CSS`, `PAGE_INTRO`, ...   the page's styles and fixed texts
- `user_message`       a reader error in plain words, without the file's name or installation hints
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


__all__ = [
    "BANNER", "BATCH_COLUMNS", "BATCH_NOTE", "DISCLAIMER", "EXAMPLES_NOTE", "PAGE_CSS", "PAGE_INTRO", "AnalysisView", "AnalyzeOutputs", "BatchOutputs", "Panel",
    "analysis_html", "analysis_panels", "analysis_record", "analysis_verdict", "bars_html", "batch_row",
    "batch_loaded", "batch_status", "clean_meta", "clean_percentile", "data_uri", "error_overlay", "gray_rgb", "is_tumour",
    "jsonable", "meta_markdown", "model_header", "model_record", "panels_html", "percentile_phrase", "perturbation_image",
    "perturbation_stats", "png_bytes", "pretty", "preview_html", "privacy_note", "report_image", "report_info",
    "scan_id", "scan_info",
    "score_svg", "statistic_phrase", "timings_markdown", "user_message", "verdict", "warm_up", "write_batch_csv",
    "write_report",
]

DISCLAIMER = "Research demo, not a medical device; not for diagnosis."
# The page's fixed texts.
BANNER = (f"<div class='mfp-disclaimer'>&#9888; {DISCLAIMER} Outputs of an experimental model must not inform any "
          "clinical decision. Do not upload scans that identify a patient.</div>")
TOP_HTML = ("<div class='mfp-top'><h1>MedFedPure: a brain-tumour MRI classifier that defends itself against "
            f"attacks</h1>{BANNER}</div>")
PAGE_INTRO = (
    "A classifier trained by several hospitals together without sharing their scans (federated learning) answers "
    "tumour or no tumour, and the tumour type when the model has one. Small, invisible changes to a scan (an "
    "**attack**) can flip its answer; the **defence** looks for them with a detector (a masked autoencoder that "
    "tries to redraw the scan: attacked scans are harder to redraw) and **purifies** a scan that looks attacked "
    "(it adds noise, more for a more suspicious scan, and a diffusion model redraws it). An out-of-distribution "
    "check, when the model has one, refuses files unlike any training scan. Attack a scan and watch each stage. "
    "Reimplementation of Karami et al., *MedFedPure*, arXiv 2511.11625.\n\n"
    "<small>Example scans: Br35H :: Brain Tumor Detection 2020 (Kaggle, Ahmed Hamada), via "
    "github.com/07Harjot/Brain-tumor-detection-system; the Nickparvar Brain Tumor MRI Dataset (Kaggle) and "
    "TCGA-LGG FLAIR slices (Buda et al. 2019, TCIA). Licences not stated by the authors (research/educational "
    "use); see assets/examples/SOURCE.md. The models may have seen some of them in training: they demonstrate, "
    "they do not measure.</small>")
EXAMPLES_NOTE = "<small>Where the examples come from: see \"About this demo\" above.</small>"
START_TEXT = ("### Start here\n1. Click an example scan (or upload your own: PNG, JPEG, DICOM or NIfTI).\n"
              "2. Optionally choose an attack, to see whether the defence notices it.\n"
              "3. Press **Analyze**: the answer appears here, with how sure the model is.")
BATCH_START = ("**Several scans at once**: upload them on the left, then press **Analyze all**. The table below "
               "gets one row per file (one per slice of a volume).")
BATCH_NOTE = (
    "Several scans, the files of a DICOM series, or NIfTI volumes (one row per slice asked for). Rows name each "
    "scan by its file's number in upload order, its slice or frame, a small picture and a pixel hash, never by "
    "its file name. A file that cannot be read gets an error row; the rest are still analyzed.")


def ready_text(meta: dict) -> str:
    """The answer box after an upload: what to do next."""
    what = ("Move the slice slider or change the plane to choose another slice, then press **Analyze**."
            if meta.get("plane") else "Press **Analyze** (or choose an attack first).")
    return f"### Scan loaded\n{what}"


def model_header(description: str, device, hospitals, loading: bool = False) -> str:
    """The page's line under the title: the model, the device (or that the models are still loading), hospitals.
    hospitals: their ids, or id -> the page's name for each."""
    state = f"device **{device}**" + (" (loading the models...)" if loading else "")
    if isinstance(hospitals, dict):
        names = list(hospitals.values())
        simulated = [n for n in names if n.startswith("simulated")]
        real = [n for n in names if not n.startswith("simulated")]
        parts = ([f"{len(simulated)} simulated"] if simulated else []) + real
        where = f"{len(names)} hospitals ({', '.join(parts)})"
    else:
        where = f"hospitals {', '.join(map(str, hospitals))}"
    return f"**Model:** {description or 'unknown source'} &middot; {state} &middot; {where}"


def privacy_note(keep_minutes: float) -> str:
    return (f"<small>{DISCLAIMER} Uploaded files are read into memory and deleted at once; reports "
            "and the scans held in memory are deleted when you close this page, after "
            f"{keep_minutes:.0f} minutes at the latest, and when the server stops. Pages, tables, "
            "CSV files and reports name a scan by a hash of its pixels, never by its file name, DICOM "
            "tags or NIfTI header text.</small>")


# The styles of the HTML built here (panels, plot, bars, preview) and of the page's layout; the app passes them
# to the page. Every text colour has a contrast of at least 4.5:1 on its background.
PAGE_CSS = """
.mfp-top h1 {font-size:1.45em; margin:0 0 6px 0;}
.mfp-disclaimer {background:#fff4e5; border:1px solid #f0a000; border-radius:8px; padding:6px 12px;
                 color:#5a3b00; font-weight:600;}
.mfp-step p {margin:0; font-size:1.02em;}
.mfp-verdict {min-height:64px;}
.mfp-verdict h3 {margin:0 0 4px 0;}
.mfp-verdict details {margin-top:6px;}
.mfp-verdict summary {cursor:pointer; font-weight:600;}
.mfp-grid {display:grid; grid-template-columns:repeat(auto-fill, minmax(170px, 1fr)); gap:10px;}
.mfp-panel {margin:0; display:flex; flex-direction:column; gap:3px;}
.mfp-title {font-weight:600; font-size:0.9em; line-height:1.25; overflow-wrap:break-word;}
.mfp-panel img {width:100%; aspect-ratio:1/1; object-fit:contain; image-rendering:pixelated; background:#000;
                border-radius:4px; display:block;}
.mfp-blank {width:100%; aspect-ratio:1/1; display:flex; align-items:center; justify-content:center;
            text-align:center; padding:10px; box-sizing:border-box; background:#f2f2f2; color:#444;
            border:1px dashed #bbb; border-radius:4px; font-size:0.85em;}
.mfp-note {font-size:0.8em; color:#444; line-height:1.3;}
.mfp-row {display:grid; grid-template-columns:minmax(0, 1fr); gap:14px; margin-top:12px;}
.mfp-plot {min-width:0;} .mfp-svg {display:block; max-width:520px;}
.mfp-legend {display:flex; flex-wrap:wrap; gap:4px 12px; font-size:0.8em; color:#333;}
.mfp-legend i {display:inline-block; width:14px; height:3px; margin:0 5px 3px 0; vertical-align:middle;}
.mfp-bars {margin-bottom:10px;}
.mfp-bar {display:grid; grid-template-columns:110px minmax(0, 1fr) 46px; gap:6px; align-items:center;
          font-size:0.85em;}
.mfp-bar-track {height:12px; background:#e6e6e6; border-radius:3px; overflow:hidden;}
.mfp-bar-fill {display:block; height:100%; background:#2d6ebe;}
.mfp-muted .mfp-bar-fill {background:#999;} .mfp-muted {color:#555;}
.mfp-sides {position:relative; display:inline-block; width:100%; line-height:0;}
.mfp-preview .mfp-sides {width:180px;}
.mfp-preview img {width:180px; height:180px; image-rendering:pixelated; background:#000; border-radius:4px;}
.mfp-side {position:absolute; font:700 12px/1 sans-serif; color:#ffeb3b; background:rgba(0,0,0,0.75);
           padding:2px 3px; border-radius:3px;}
.mfp-side-l {left:2px; top:50%; transform:translateY(-50%);} .mfp-side-r {right:2px; top:50%;
           transform:translateY(-50%);}
.mfp-side-t {top:2px; left:50%; transform:translateX(-50%);} .mfp-side-b {bottom:2px; left:50%;
           transform:translateX(-50%);}
#mfp-batch-table img {width:44px; height:44px; image-rendering:pixelated; margin:0;}
#mfp-batch-table table, #mfp-batch-table td, #mfp-batch-table th, #mfp-batch-table td *, #mfp-batch-table th * {
    font-family:var(--font); font-size:13px;}
#mfp-batch-table th, #mfp-batch-table th * {overflow-wrap:normal; word-break:normal; hyphens:none;}
/* the progress over the answer and the batch status: stage and bar, then the step count, never on top of each
   other (Gradio centres them absolutely, so they overlap in a short box or on a phone) */
#mfp-verdict, #mfp-batch-status {min-height:112px;}
#mfp-verdict [data-testid="status-tracker"], #mfp-batch-status [data-testid="status-tracker"] {
    justify-content:flex-start; padding:8px 10px !important; gap:4px;}
#mfp-verdict .meta-text-center, #mfp-batch-status .meta-text-center {position:static; transform:none;
    order:2; padding:0;}
#mfp-verdict .progress-level-inner, #mfp-batch-status .progress-level-inner {margin:4px 0; text-align:center;
    white-space:normal; overflow-wrap:anywhere;}
/* a stage text that wraps to two lines (a phone) pushes the bar down instead of running under it */
#mfp-verdict .progress-level, #mfp-batch-status .progress-level {display:flex; flex-direction:column;
    align-items:center; gap:4px; height:auto;}
#mfp-verdict .progress-bar-wrap, #mfp-batch-status .progress-bar-wrap {position:static !important;
    margin:6px 0 0 0 !important; flex:none;}
/* Gradio's own grey texts, darker for 4.5:1 contrast */
.or, .label-clear-button, [data-testid="block-info"], .info-text {color:#4b5563 !important;}
.wrap .icon-wrap + *, .upload-container .wrap {color:#3730a3;}
@media (max-width: 700px) {.mfp-grid {grid-template-columns:repeat(2, minmax(0, 1fr));}
                           .mfp-top h1 {font-size:1.15em;}}
"""
# On Analyze: on a narrow screen (a phone: one column) scroll to the answer box, where the progress shows.
SHOW_ANSWER_JS = """
() => { if (window.innerWidth < 700) {
  const box = document.querySelector('#mfp-verdict'); if (box) box.scrollIntoView({behavior: 'smooth', block: 'start'}); } }
"""
# Runs once when the page loads: an open dropdown list closes when the keyboard focus leaves its input (Gradio
# leaves it open over the next field otherwise).
PAGE_JS = """
() => {
  document.addEventListener('focusout', (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || !input.closest('.wrap-inner, [role="combobox"]')) return;
    setTimeout(() => {
      const holder = input.closest('.block');
      if (holder && holder.contains(document.activeElement)) return;
      input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
    }, 0);
  }, true);
}
"""
# The batch table (and its CSV, without the picture): each scan is named by its file's number in upload order,
# its slice or frame, a small picture and a pixel hash (never the uploaded file's name); the status sits early so
# that an error is readable at 1400 px. Yes/no and rounded numbers, the same in the table and the CSV.
BATCH_COLUMNS = ["row", "image", "file", "slice", "scan", "status", "answer", "sure", "tumour type",
                 "like training scans", "flagged", "score", "threshold", "purified (t*)", "before defence"]
CSV_COLUMNS = [c for c in BATCH_COLUMNS if c != "image"]
BATCH_TYPES = ["number", "markdown", "number"] + ["str"] * (len(BATCH_COLUMNS) - 3)
_INFERNO_HEX = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a07220b07240c08260d08"
    "290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48210c4a230c4c240c4f260c51280b5329"
    "0b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b09643d09653e0966400a67420a68440a68450a69470b6a490b6a"
    "4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e6716"
    "6e69166e6a176e6c186e6d186e6f196e71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85"
    "216b87216b88226a8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655bc3754bd3853bf39"
    "52c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545d24644d34743d44842d54a41d74b3fd8"
    "4c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429"
    "eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711ff1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f784"
    "10f8850ff8870ef8890cf98b0bf98c0af98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afc"
    "a60cfca80dfcaa0ffcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865f2ea69f1ec6df1ed"
    "71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)
_RDBU_R_HEX = (
    "05306106326407346708366a09386d0a3b700c3d730d3f760e41790f437b10457e114781124984134c87144e8a15508d1752901854931956"
    "961a58991b5a9c1c5c9f1d5fa21e61a51f63a82065ab2267ac2369ad246aae266caf276eb02870b12a71b22b73b32c75b42e77b52f79b530"
    "7ab6327cb7337eb83480b93681ba3783bb3885bc3a87bd3b88be3c8abe3e8cbf3f8ec0408fc14291c24393c34695c44997c54c99c64f9bc7"
    "529dc8569fc959a1ca5ca3cb5fa5cd62a7ce65a9cf68abd06bacd16eaed271b0d375b2d478b4d57bb6d67eb8d781bad884bcd987beda8ac0"
    "db8dc2dc90c4dd93c6de96c7df98c8e09bc9e09dcbe1a0cce2a2cde3a5cee3a7d0e4a9d1e5acd2e5aed3e6b1d5e7b3d6e8b6d7e8b8d8e9bb"
    "daeabddbeac0dcebc2ddecc5dfecc7e0edcae1eecce2efcfe4efd1e5f0d2e6f0d4e6f1d5e7f1d7e8f1d8e9f1dae9f2dbeaf2ddebf2deebf2"
    "e0ecf3e1edf3e3edf3e4eef4e6eff4e7f0f4e9f0f4eaf1f5ecf2f5edf2f5eff3f5f0f4f6f2f5f6f3f5f6f5f6f7f6f7f7f7f6f6f7f5f4f8f4"
    "f2f8f3f0f8f2eff8f1edf9f0ebf9efe9f9eee7f9ede5f9ebe3faeae1fae9dffae8defae7dcfbe6dafbe5d8fbe4d6fbe3d4fce2d2fce0d0fc"
    "dfcffcdecdfdddcbfddcc9fddbc7fdd9c4fcd7c2fcd5bffcd3bcfbd0b9fbceb7fbccb4facab1fac8aff9c6acf9c4a9f9c2a7f8bfa4f8bda1"
    "f8bb9ef7b99cf7b799f7b596f6b394f6b191f6af8ef5ac8bf5aa89f5a886f4a683f3a481f2a17ff19e7df09c7bef9979ee9677ec9374eb91"
    "72ea8e70e98b6ee8896ce6866ae58368e48066e37e64e27b62e17860df765ede735cdd7059dc6e57db6b55da6853d86551d7634fd6604dd5"
    "5d4cd35a4ad25849d05548cf5246ce4f45cc4c44cb4942c94741c84440c6413ec53e3dc43b3cc2383ac13639bf3338be3036bd2d35bb2a34"
    "ba2832b82531b72230b61f2eb41c2db3192cb1182bae172aab162aa81529a51429a213289f12289c1127991027960f27930e26900d268d0c"
    "258a0b25870a248409248108237f08237c07227906227605217304217003206d02206a011f67001f"
)


# ------------------------------------------------------------------------------------------------ basics
def pretty(class_name: str | None) -> str:
    """'no_tumour' -> 'no tumour'."""
    return "n/a" if class_name is None else str(class_name).replace("_", " ")


def is_tumour(class_name: str | None) -> bool:
    """Whether a class name is a tumour decision ('tumour', 'glioma', ...), not 'no tumour' / 'normal'."""
    name = pretty(class_name).lower()
    return class_name is not None and not (name.startswith("no ") or name in ("normal", "healthy", "n/a"))


def _u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8."""
    g = _u8(image)
    return np.repeat(g[..., None], 3, axis=2)


@functools.lru_cache(maxsize=None)
def lut(name: str) -> np.ndarray:
    """A colour map as a (256, 3) uint8 table: 'inferno' or 'RdBu_r' (matplotlib's, sampled at 256 levels)."""
    table = {"inferno": _INFERNO_HEX, "RdBu_r": _RDBU_R_HEX}[name]
    out = np.frombuffer(bytes.fromhex(table), dtype=np.uint8).reshape(256, 3)
    out.flags.writeable = False
    return out


def _apply_lut(values01: np.ndarray, name: str) -> np.ndarray:
    idx = np.rint(np.clip(np.nan_to_num(values01, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return lut(name)[idx]


def scan_id(image: np.ndarray) -> str:
    """A display name that identifies the picture, not the patient: 'scan-' + 8 hex digits of its pixels' sha256."""
    data = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    return "scan-" + hashlib.sha256(data.tobytes()).hexdigest()[:8]


def png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes (fast zlib level; the pictures are small)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


# ------------------------------------------------------------------------------------------------ overlays
def error_overlay(image: np.ndarray, error_map: np.ndarray, vmax: float | None = None, cmap: str = "inferno",
                  max_alpha: float = 0.75) -> np.ndarray:
    """The per-pixel anomaly map as a heat map over the scan -> (H, W, 3) uint8.

    vmax: value mapped to the top of the colour scale (default: the map's 99.5th percentile). Each pixel's
    opacity grows with its value, so unremarkable regions show the scan underneath.
    """
    image = np.asarray(image, dtype=np.float32)
    err = np.abs(np.asarray(error_map, dtype=np.float32))
    if err.shape != image.shape:
        raise ValueError(f"error map {err.shape} and scan {image.shape} differ in shape")
    top = float(vmax) if vmax else float(np.percentile(err, 99.5))
    norm = np.clip(err / top, 0.0, 1.0) if top > 0 else np.zeros_like(err)
    heat = _apply_lut(norm, cmap).astype(np.float32) / 255.0
    alpha = (max_alpha * norm)[..., None]
    base = np.clip(image, 0, 1)[..., None]
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
        return _apply_lut(np.full(delta.shape, 0.5, np.float32), cmap), 1.0
    return _apply_lut(0.5 + delta / (2 * scale), cmap), 1.0 / scale


# ------------------------------------------------------------------------------------------------ scores
def clean_percentile(score: float, quantiles) -> float:
    """Percent of the hospital's clean calibration scores below `score`, interpolated between its quantiles.

    `quantiles`: the scores at evenly spaced levels 0, 1/(n-1), ..., 1 (MedFedPure stores 21: every 5%).
    """
    q = np.asarray(quantiles if quantiles is not None else [], dtype=np.float64)
    if q.size < 2 or score is None or not np.isfinite(score):
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


# What each detector statistic measures, in words (medfedpure.detector.STATISTICS).
STATISTIC_TEXT = {
    "mean_abs_error": "the masked autoencoder's mean reconstruction error (how badly it redraws the scan)",
    "highpass_abs_residual": "the fine-grained (high-pass) part of the masked autoencoder's reconstruction error",
    "background_highpass_residual": "the fine-grained part of the reconstruction error in the dark background "
                                    "around the head",
    "background_highpass": "the fine-grained texture (high-pass energy) of the dark background around the head, "
                           "which is smooth in a clean scan",
}
BACKGROUND_STATISTICS = ("background_highpass", "background_highpass_residual")


def statistic_phrase(statistic: str | None) -> str:
    """What the detector's score measures, in words (no internal names)."""
    if not statistic:
        return "the detector's anomaly score"
    return STATISTIC_TEXT.get(statistic, "how unusual the scan looks to the masked autoencoder")


def _fmt(x) -> str:
    """A score or threshold to 3 significant digits (what they can tell apart)."""
    return "n/a" if x is None else f"{float(x):.3g}"


def _pct(p: float) -> str:
    """A probability as a whole percentage; never "100%" or "0%" for what is not certain."""
    p = float(p)
    if 0.995 <= p < 1.0:
        return ">99%"
    if 0.0 < p < 0.005:
        return "<1%"
    return f"{100 * p:.0f}%"


def sureness(p: float) -> str:
    """How sure the model is, in words, with the number."""
    p = float(p)
    word = "very sure" if p >= 0.95 else "fairly sure" if p >= 0.8 else "unsure" if p < 0.65 else "leaning"
    return f"{_pct(p)}, {word}"


def type_phrase(result) -> str:
    """The tumour type beside the decision, with its meaning stated."""
    ttype = getattr(result, "tumour_type", None)
    probs = getattr(result, "tumour_type_probabilities", None) or {}
    if ttype is None:
        return "Tumour type: not estimated by this model."
    if not is_tumour(result.final_prediction):
        return ("Tumour type: not applicable, the answer is no tumour (the type estimate only means something "
                "when the answer is tumour).")
    others = ", ".join(f"{pretty(k)} {_pct(v)}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])
                       if k != ttype)
    p = probs.get(ttype)
    return (f"Tumour type: most like **{pretty(ttype)}**" + (f" ({_pct(p)}" + (f"; {others})" if others else ")")
                                                             if p is not None else "") + ".")


def _colour_picture(result) -> bool:
    """The out-of-distribution check turned the file away as a colour picture (not for its features)."""
    return getattr(result, "ood_reason", None) == "colour"


def ood_phrase(result) -> str:
    ind = getattr(result, "in_distribution", None)
    if ind is None:
        return ("Out-of-distribution check: not available in this model; the answer assumes the file is a brain "
                "MRI slice.")
    where = ""
    if getattr(result, "ood_score", None) is not None and getattr(result, "ood_threshold", None) is not None:
        rel = ">" if not ind else "<="
        where = f" (score {_fmt(result.ood_score)} {rel} threshold {_fmt(result.ood_threshold)})"
    if ind:
        return f"Out-of-distribution check: looks like the brain MRI slices the model was trained on{where}."
    if _colour_picture(result):
        from medfedpure.ood import COLOUR_MAX, OOD_WORDS  # imports torch: not before the page is served

        return (f"Out-of-distribution check: {OOD_WORDS['colour']} (more than {_pct(COLOUR_MAX)} of this file's "
                f"pixels are in colour); its features alone score {_fmt(result.ood_score)} against a threshold of "
                f"{_fmt(result.ood_threshold)}.")
    return f"Out-of-distribution check: unlike every training scan{where}."


def _answer_line(result, defence: bool) -> str:
    final = pretty(result.final_prediction)
    p = max(map(float, result.final_probabilities))
    return f"### Answer: {final} ({sureness(p)})" + ("" if defence else " · defence off")


def _story(result, *, defence: bool, attack: str, eps: float, clean_prediction: str | None) -> tuple[str, str]:
    """(headline addition, plain sentences): whether the scan looked attacked and what the defence did, and
    when an attack was run, whether the answer shown is the clean scan's."""
    before, final = pretty(result.prediction), pretty(result.final_prediction)
    purified = result.purified is not None
    changed = purified and result.purified_prediction != result.prediction
    if not defence:
        look = "The defence is off: nothing was checked or purified, so the answer is the classifier's own."
    elif result.flagged:
        look = "The scan looked attacked (the detector flagged it), so it was purified (noised, then redrawn)"
        look += (f", which changed the answer from {before} to {final}." if changed else
                 ", and the answer stayed the same." if purified else ".")
    elif purified:
        look = ("The scan did not look attacked; it was purified anyway ('purify always')"
                + (f", which changed the answer from {before} to {final}." if changed else
                   ", and the answer stayed the same."))
    else:
        look = "The scan did not look attacked (the detector did not flag it), so it was not purified."
    if attack == "none" or clean_prediction is None:
        if defence and result.flagged and attack == "none":
            look += " No attack was run, so the flag is a false alarm."
        return "", look
    name = {"fgsm": "FGSM", "pgd": "PGD"}.get(attack, "adaptive")
    clean = pretty(clean_prediction)
    hit = clean_prediction != result.prediction
    attack_text = (f"The {name} attack (strength {eps * 255:.0f}/255) changed the classifier's answer from "
                   f"{clean} to {before}." if hit else
                   f"The {name} attack (strength {eps * 255:.0f}/255) did not change the classifier's answer.")
    if result.final_prediction == clean_prediction:
        if hit and defence:
            return " · the defence restored it", (f"{attack_text} {look} **The defence restored the clean "
                                                       f"scan's answer ({clean}).**")
        return "", f"{attack_text} {look} The answer is the clean scan's ({clean})."
    if not defence:
        return " · the attack won", (f"{attack_text} {look} **The answer shown is not the clean scan's "
                                          f"answer ({clean}).**")
    return " · the defence failed", (f"{attack_text} {look} **The defence failed: the clean scan's answer was "
                                          f"{clean}, the answer shown is {final}.**")


def verdict(result, *, defence: bool = True, attack: str = "none", eps: float = 0.0,
            clean_prediction: str | None = None, quantiles=None, statistic: str | None = None,
            target_fpr: float | None = None, background_fraction: float | None = None,
            blank: bool = False) -> str:
    """The answer about one `ScanResult` (markdown), plain words first: the answer and how sure the model is,
    the tumour type, whether the scan looked attacked and what the defence did, and after an attack whether the
    answer is the clean scan's (the defence restored it, or failed). A scan the model does not know (out of
    distribution, or blank) gets that plain message and no answer at all. The statistics behind it (scores,
    thresholds, purification depth, the out-of-distribution score) follow in a details fold."""
    unknown = blank or getattr(result, "in_distribution", None) is False
    lines = []
    if blank:
        lines.append("### No diagnosis: the image is blank\nEvery pixel has the same value, so there is nothing "
                     "to analyze.")
    elif unknown and _colour_picture(result):
        lines.append("### No diagnosis: this is a colour picture, not an MRI slice\n"
                     "MRI slices are grayscale; a colour file is a photograph, a screenshot or a colour-coded map, "
                     "which the model was never trained on, so any answer would be meaningless. Upload the scan "
                     "itself (DICOM, NIfTI, or a grayscale PNG / JPEG export).")
    elif unknown:
        lines.append("### No diagnosis: this does not look like a brain MRI slice the model knows\n"
                     "It is unlike every scan the model was trained on (for example a blank or noisy image, a "
                     "photograph, or another body part or modality), so any answer would be meaningless.")
    else:
        extra, story = _story(result, defence=defence, attack=attack, eps=eps, clean_prediction=clean_prediction)
        lines.append(_answer_line(result, defence) + extra)
        if is_tumour(result.final_prediction):
            lines.append(type_phrase(result))
        lines.append(story)
    # the statistics behind it
    facts = []
    where = f", {percentile_phrase(result.score, quantiles)}" if quantiles is not None else ""
    fpr = f" (set so that about {_pct(target_fpr)} of clean scans exceed it)" if target_fpr else ""
    what = f" The score measures {statistic_phrase(statistic)}." if statistic else ""
    if result.flagged:
        facts.append(f"**Flagged as suspicious**: detector score {_fmt(result.score)} > threshold "
                     f"{_fmt(result.threshold)}{fpr}{where}.{what}")
    else:
        facts.append(f"**Not flagged**: detector score {_fmt(result.score)} ≤ threshold "
                     f"{_fmt(result.threshold)}{fpr}{where}.{what}")
    little = background_fraction is not None and background_fraction < 0.05
    if statistic in BACKGROUND_STATISTICS and not blank and (little or (result.score == 0 and not result.flagged)):
        share = f" ({100 * background_fraction:.0f}% of its own pixels)" if background_fraction is not None else ""
        facts.append(f"The detector looks only at the dark background around the head, and this scan has little "
                     f"or none{share}" + (", and its score is exactly 0" if result.score == 0 else "")
                     + ", so the detector cannot judge it: read 'not flagged' as 'not checked'.")
    if result.purified is not None:
        facts.append(f"Purification depth t* = {result.t_star} of 1000 diffusion steps (deeper: more noise added "
                     f"before the scan is redrawn); the classifier said {pretty(result.prediction)} before and "
                     f"{pretty(result.purified_prediction)} after.")
    if attack != "none":
        facts.append(f"Attack strength: each pixel moved by at most {eps:.4g} (= {eps * 255:.1f}/255 of the "
                     "brightness range).")
    facts.append(ood_phrase(result))
    lines.append("<details><summary>Why: the numbers behind this answer</summary>\n\n"
                 + "\n\n".join(facts) + "\n\n</details>")
    return "\n\n".join(lines)


def timings_markdown(timings_ms: dict, device: str) -> str:
    """One line: the device, then each stage's milliseconds."""
    stages = " &middot; ".join(f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in timings_ms.items() if v is not None)
    return f"<small>Device **{device}** &middot; {stages}</small>"


# ------------------------------------------------------------------------------------------------ page figures
class Panel:
    """One picture of the page: a title, the image ((H, W) float or (H, W, 3) uint8; None = empty), a note, and
    for a volume's slice its side letters (left, right, top, bottom)."""

    __slots__ = ("title", "image", "note", "sides")

    def __init__(self, title: str, image=None, note: str = "", sides=None):
        self.title, self.image, self.note, self.sides = title, image, note, sides

    def rgb(self) -> np.ndarray | None:
        if self.image is None:
            return None
        return gray_rgb(self.image) if np.ndim(self.image) == 2 else np.asarray(self.image, dtype=np.uint8)


def panels_html(panels: list[Panel]) -> str:
    """A grid of titled pictures; an empty panel says why it is empty."""
    cells = []
    for p in panels:
        rgb = p.rgb()
        body = (f"<div class='mfp-sides'><img alt='{html.escape(p.title)}' src='{data_uri(rgb)}'>"
                f"{_sides_html(p.sides)}</div>" if rgb is not None else
                f"<div class='mfp-blank'>{html.escape(p.note or 'not computed')}</div>")
        note = f"<div class='mfp-note'>{html.escape(p.note)}</div>" if rgb is not None and p.note else ""
        cells.append(f"<figure class='mfp-panel'><figcaption class='mfp-title'>{html.escape(p.title)}</figcaption>"
                     f"{body}{note}</figure>")
    return "<div class='mfp-grid'>" + "".join(cells) + "</div>"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _score_geometry(quantiles, threshold: float, score: float, clean_score: float | None):
    q = np.asarray(quantiles if quantiles is not None else [], dtype=np.float64)
    q = q[np.isfinite(q)]
    values = [threshold, score] + ([clean_score] if clean_score is not None else []) + list(q)
    values = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    return q, lo - pad, hi + pad


def score_svg(quantiles, threshold: float, score: float, clean_score: float | None = None,
              width: int = 460, height: int = 210) -> str:
    """The scan's detector score against the threshold and the hospital's clean-score CDF, as inline SVG, with
    its legend below the axes (nothing is drawn over the ticks or the axis titles)."""
    q, lo, hi = _score_geometry(quantiles, threshold, score, clean_score)
    left, right, top, bottom = 58, 12, 10, 44
    pw, ph = width - left - right, height - top - bottom

    def x(v):
        return left + (float(v) - lo) / (hi - lo) * pw

    def y(level):
        return top + (1 - float(level) / 100) * ph

    parts = [f"<svg class='mfp-svg' viewBox='0 0 {width} {height}' width='100%' role='img' "
             f"aria-label='detector score plot' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' "
             f"font-size='11'>",
             f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='#fff' stroke='#888'/>"]
    for level in (0, 25, 50, 75, 100):
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{y(level):.1f}' y2='{y(level):.1f}' stroke='#e5e5e5'/>"
                     f"<text x='{left - 5}' y='{y(level) + 4:.1f}' text-anchor='end' fill='#333'>{level}</text>")
    for t in _ticks(lo, hi):
        parts.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{top + ph}' y2='{top + ph + 4}' stroke='#555'/>"
                     f"<text x='{x(t):.1f}' y='{top + ph + 16}' text-anchor='middle' fill='#333'>{t:.3g}</text>")
    parts.append(f"<text x='{left + pw / 2}' y='{height - 6}' text-anchor='middle' fill='#222'>detector score</text>"
                 f"<text transform='translate(13 {top + ph / 2}) rotate(-90)' text-anchor='middle' fill='#222'>"
                 "% of clean scans below</text>")
    if q.size >= 2:
        pts = " ".join(f"{x(v):.1f},{y(lv):.1f}" for v, lv in zip(q, np.linspace(0, 100, q.size)))
        parts.append(f"<polyline points='{pts}' fill='none' stroke='#555' stroke-width='1.6'/>")
    parts.append(f"<line x1='{x(threshold):.1f}' x2='{x(threshold):.1f}' y1='{top}' y2='{top + ph}' "
                 "stroke='#e07b00' stroke-width='1.8' stroke-dasharray='5 3'/>")
    if clean_score is not None:
        parts.append(f"<line x1='{x(clean_score):.1f}' x2='{x(clean_score):.1f}' y1='{top}' y2='{top + ph}' "
                     "stroke='#2a9d3a' stroke-width='1.8'/>")
    parts.append(f"<line x1='{x(score):.1f}' x2='{x(score):.1f}' y1='{top}' y2='{top + ph}' stroke='#d62728' "
                 "stroke-width='2.6'/></svg>")
    legend = [("#555", "clean scans of this hospital (cumulative)"), ("#e07b00", f"threshold {_fmt(threshold)}")]
    if clean_score is not None:
        legend.append(("#2a9d3a", f"the scan before the attack {_fmt(clean_score)}"))
    legend.append(("#d62728", f"this scan {_fmt(score)}"))
    keys = "".join(f"<span><i style='background:{c}'></i>{html.escape(t)}</span>" for c, t in legend)
    return f"<div class='mfp-plot'>{''.join(parts)}<div class='mfp-legend'>{keys}</div></div>"


def bars_html(title: str, probabilities: dict, note: str = "", muted: bool = False) -> str:
    """Probabilities as labelled horizontal bars (largest first)."""
    rows = []
    for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        p = float(p)
        rows.append(f"<div class='mfp-bar'><span class='mfp-bar-name'>{html.escape(pretty(name))}</span>"
                    f"<span class='mfp-bar-track'><span class='mfp-bar-fill' style='width:{100 * p:.1f}%'></span>"
                    f"</span><span class='mfp-bar-p'>{_pct(p)}</span></div>")
    note = f"<div class='mfp-note'>{html.escape(note)}</div>" if note else ""
    cls = "mfp-bars mfp-muted" if muted else "mfp-bars"
    return f"<div class='{cls}'><div class='mfp-title'>{html.escape(title)}</div>{''.join(rows)}{note}</div>"


# ------------------------------------------------------------------------------------------------ report
@functools.lru_cache(maxsize=None)
def _font_source():
    """matplotlib's DejaVu Sans when installed (found without importing matplotlib), else Pillow's own font."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("matplotlib")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
            if path.is_file():
                return path.read_bytes()
    except Exception:  # noqa: BLE001
        pass
    return None


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """A TrueType font with Pillow's basic layout (several times faster than Raqm for plain Latin text)."""
    from PIL import ImageFont

    data = _font_source()
    try:
        if data is None:
            default = ImageFont.load_default(size=size)
            data = default.path.getvalue() if hasattr(default.path, "getvalue") else None
            if data is None:
                return default
        return ImageFont.truetype(io.BytesIO(data), size, layout_engine=ImageFont.Layout.BASIC)
    except Exception:  # noqa: BLE001 - Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width_px: int) -> list[str]:
    """Greedy word wrap; each word is measured once."""
    space = draw.textlength(" ", font=font)
    widths: dict[str, float] = {}
    out = []
    for para in text.split("\n"):
        line, used = "", 0.0
        for w in para.split():
            wl = widths.get(w)
            if wl is None:
                wl = widths[w] = draw.textlength(w, font=font)
            if not line:
                line, used = w, wl
            elif used + space + wl <= width_px:
                line, used = f"{line} {w}", used + space + wl
            else:
                out.append(line)
                line, used = w, wl
        out.append(line)
    return out


def _plot_pil(draw, box, quantiles, threshold, score, clean_score):
    x0, y0, x1, y1 = box
    left, bottom = 52, 34
    px0, py0, px1, py1 = x0 + left, y0 + 6, x1 - 6, y1 - bottom
    q, lo, hi = _score_geometry(quantiles, threshold, score, clean_score)
    small = _font(11)

    def x(v):
        return px0 + (float(v) - lo) / (hi - lo) * (px1 - px0)

    def y(level):
        return py0 + (1 - float(level) / 100) * (py1 - py0)

    draw.rectangle((px0, py0, px1, py1), outline=(140, 140, 140), fill=(255, 255, 255))
    for level in (0, 50, 100):
        draw.line((px0, y(level), px1, y(level)), fill=(230, 230, 230))
        draw.text((px0 - 5, y(level)), str(level), fill=(50, 50, 50), font=small, anchor="rm")
    for t in _ticks(lo, hi):
        draw.text((x(t), py1 + 4), f"{t:.3g}", fill=(50, 50, 50), font=small, anchor="mt")
    draw.text(((px0 + px1) / 2, y1 - 2), "detector score", fill=(30, 30, 30), font=small, anchor="mb")
    draw.text((x0, py0 - 2), "% clean below", fill=(30, 30, 30), font=small, anchor="lb")
    if q.size >= 2:
        pts = [(x(v), y(lv)) for v, lv in zip(q, np.linspace(0, 100, q.size))]
        draw.line(pts, fill=(85, 85, 85), width=2)
    tx = x(threshold)
    for s in range(int(py0), int(py1), 8):
        draw.line((tx, s, tx, min(s + 5, py1)), fill=(224, 123, 0), width=2)
    if clean_score is not None:
        draw.line((x(clean_score), py0, x(clean_score), py1), fill=(42, 157, 58), width=2)
    draw.line((x(score), py0, x(score), py1), fill=(214, 39, 40), width=3)


def report_image(panels: list[Panel], info: dict) -> np.ndarray:
    """One analysis as a single picture -> (H, W, 3) uint8: title, six image panels (an empty one says why), the
    score plot, probability bars, the verdict text and the footer.

    info: name, header (one line), verdict (plain text), probabilities and final_probabilities (class -> p),
    type_probabilities (optional), score, threshold, quantiles, clean_score (optional), timings_ms, device.
    """
    from PIL import Image, ImageDraw

    W, side, gap, margin = 1100, 256, 34, 40
    title, body, small = _font(22), _font(14), _font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    verdict_lines = _wrap(measure, info.get("verdict", ""), body, W - 2 * margin)[:40]
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in (info.get("timings_ms") or {}).items() if v is not None)
    footer = _wrap(measure, f"{DISCLAIMER}  Device: {info.get('device', '?')}.  {timings}", small, W - 2 * margin)[:3]
    plot_top = 84 + 2 * (side + gap + 20) + 4
    H = plot_top + 270 + 19 * len(verdict_lines) + 16 + 15 * len(footer) + 16
    im = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((W / 2, 22), f"MedFedPure analysis: {info.get('name', 'scan')}", fill=(0, 0, 0), font=title,
              anchor="mt")
    draw.text((W / 2, 54), info.get("header", ""), fill=(70, 70, 70), font=small, anchor="mt")
    top = 84
    col_w = (W - 2 * margin) / 3
    for i, p in enumerate(panels[:6]):
        cx = margin + (i % 3) * col_w + col_w / 2
        y = top + (i // 3) * (side + gap + 20)
        draw.text((cx, y), p.title, fill=(20, 20, 20), font=body, anchor="mt")
        box = (int(cx - side / 2), y + 20, int(cx + side / 2), y + 20 + side)
        rgb = p.rgb()
        if rgb is None:
            draw.rectangle(box, fill=(242, 242, 242), outline=(200, 200, 200))
            lines = _wrap(draw, p.note or "not computed", small, side - 24)
            for k, line in enumerate(lines[:6]):
                draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + (k - len(lines[:6]) / 2) * 16 + 8),
                          line, fill=(110, 110, 110), font=small, anchor="mm")
        else:
            im.paste(Image.fromarray(rgb).resize((side, side), Image.Resampling.NEAREST), box[:2])
            if getattr(p, "sides", None):  # a volume's side letters, as on the page
                (x0, y0, x1, y1), mid = box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
                for letter, at in zip(p.sides, ((x0 + 9, mid[1]), (x1 - 9, mid[1]), (mid[0], y0 + 9),
                                                (mid[0], y1 - 9))):
                    draw.rectangle((at[0] - 8, at[1] - 8, at[0] + 8, at[1] + 8), fill=(0, 0, 0))
                    draw.text(at, letter, fill=(255, 235, 59), font=body, anchor="mm")
    y = top + 2 * (side + gap + 20) + 4
    _plot_pil(draw, (margin, y, margin + 500, y + 230), info.get("quantiles"), float(info["threshold"]),
              float(info["score"]), info.get("clean_score"))
    # probability bars
    bx, by = margin + 560, y
    groups = [("before the defence", info.get("probabilities") or {}),
              (info.get("final_label", "final answer"), info.get("final_probabilities") or {})]
    if info.get("type_probabilities"):
        groups.append(("tumour type (if tumour)", info["type_probabilities"]))
    for label, probs in groups:
        draw.text((bx, by), label, fill=(20, 20, 20), font=body)
        by += 20
        for name, pv in sorted(probs.items(), key=lambda kv: -kv[1]):
            draw.text((bx, by + 8), pretty(name), fill=(40, 40, 40), font=small, anchor="lm")
            draw.rectangle((bx + 110, by + 2, bx + 110 + 300, by + 14), outline=(190, 190, 190))
            draw.rectangle((bx + 110, by + 2, bx + 110 + int(300 * float(pv)), by + 14), fill=(45, 110, 190))
            draw.text((bx + 420, by + 8), _pct(pv), fill=(40, 40, 40), font=small, anchor="lm")
            by += 18
        by += 8
    legend = [((85, 85, 85), "clean scans (cumulative)"), ((224, 123, 0), f"threshold {_fmt(info['threshold'])}")]
    if info.get("clean_score") is not None:
        legend.append(((42, 157, 58), f"before the attack {_fmt(info['clean_score'])}"))
    legend.append(((214, 39, 40), f"this scan {_fmt(info['score'])}"))
    lx = margin
    for colour, label in legend:
        draw.rectangle((lx, y + 240, lx + 14, y + 243), fill=colour)
        draw.text((lx + 18, y + 242), label, fill=(40, 40, 40), font=small, anchor="lm")
        lx += 26 + int(draw.textlength(label, font=small))
    y += 270
    for line in verdict_lines:
        draw.text((margin, y), line, fill=(0, 0, 0), font=body)
        y += 19
    y += 16
    for line in footer:
        draw.text((margin, y), line, fill=(80, 80, 80), font=small)
        y += 15
    return np.asarray(im)


def warm_up() -> float:
    """Render a throw-away set of figures once (loads the fonts, touches every code path) -> seconds taken."""
    import time

    t = time.perf_counter()
    img = np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128)
    panels = [Panel("warm-up", img), Panel("empty", None, "not computed"), Panel("heat", error_overlay(img, img))]
    panels_html(panels)
    score_svg([0.0, 0.5, 1.0], 0.5, 0.7, 0.2)
    png_bytes(report_image(panels, {"name": "warm-up", "verdict": "warm-up", "score": 0.7, "threshold": 0.5,
                                    "quantiles": [0.0, 0.5, 1.0], "probabilities": {"a": 1.0},
                                    "final_probabilities": {"a": 1.0}}))
    return time.perf_counter() - t


def write_report(out_dir: str | Path, stem: str, image: np.ndarray, record: dict) -> list[Path]:
    """Write STEM.png and STEM.pdf (the report picture) and STEM.json (`record`) into out_dir -> their paths.

    Nothing identifying goes in: the caller passes a non-identifying stem and record; the PDF's only metadata is
    a title naming the scan id.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, pdf, js = out / f"{stem}.png", out / f"{stem}.pdf", out / f"{stem}.json"
    pic = Image.fromarray(image)
    pic.save(png, format="PNG", compress_level=3)
    pic.save(pdf, format="PDF", resolution=100.0, title=f"MedFedPure analysis {stem}", author="", subject=DISCLAIMER,
             creator="MedFedPure demo", producer="MedFedPure demo", quality=92)
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
def thumbnail(image: np.ndarray, side: int = 48) -> str:
    """A small picture of a scan for a table cell (markdown with an inline PNG)."""
    from PIL import Image

    small = np.asarray(Image.fromarray(gray_rgb(image)).resize((side, side), Image.Resampling.BILINEAR))
    return f"![scan]({data_uri(small)})"


def _yes(value) -> str:
    return "" if value is None else ("yes" if value else "no")


def batch_row(row: int, result=None, *, error: str | None = None, file: int | None = None, place: str = "",
              scan: str = "", blank: bool = False, picture: str = "") -> dict:
    """One row of the batch table (BATCH_COLUMNS) from a ScanResult, or an error row. `row` counts from 1; `file`
    is the file's number in upload order, `place` its slice or frame ("sagittal 45 of 120"); the scan is named by
    its pixel hash only."""
    out = dict.fromkeys(BATCH_COLUMNS, "")
    out.update({"row": int(row), "file": int(row if file is None else file), "slice": place or "", "scan": scan,
                "image": picture})
    if result is None:
        out["status"] = f"error: {error or 'failed'}"
        return out
    ind = getattr(result, "in_distribution", None)
    unknown = blank or ind is False
    colour = _colour_picture(result)
    status = "ok" if not unknown else ("blank image: no diagnosis" if blank else
                                       "colour picture, not an MRI slice: no diagnosis" if colour else
                                       "not a brain MRI slice the model knows: no diagnosis")
    ttype = getattr(result, "tumour_type", None)
    out.update({"status": status, "answer": "" if unknown else pretty(result.final_prediction),
                "sure": "" if unknown else _pct(max(map(float, result.final_probabilities))),
                "tumour type": pretty(ttype) if ttype and not unknown and is_tumour(result.final_prediction) else "",
                "like training scans": _yes(ind), "flagged": _yes(bool(result.flagged)),
                "score": _fmt(result.score), "threshold": _fmt(result.threshold),
                "purified (t*)": f"yes ({int(result.t_star)})" if result.purified is not None else "no",
                "before defence": pretty(result.prediction)})
    return out


def write_batch_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


# ------------------------------------------------------------------------------------------------ messages
def user_message(exc: Exception, name: str = "scan") -> str:
    """A reader error for the page: without the display name the reader was given (the app passes a neutral one,
    never the file's), and without software installation advice, which means nothing to a clinician."""
    text = str(exc)
    for prefix in (f"{name}: ", f"{name}:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if "no decoder for it is installed" in text:
        text = text.split(" and no decoder", 1)[0] + (", which this server cannot decode. Export the image "
                                                      "uncompressed (or as PNG) and upload it again.")
    text = text.strip()
    return (text[:1].upper() + text[1:]) if text else "The file could not be read as a scan."


# ------------------------------------------------------------------------------------------------ one analysis
class AnalyzeOutputs(NamedTuple):
    """The outputs of the app's "/analyze" endpoint (and of the page's Analyze button), in their public order.

    A `gradio_client` caller gets them as a plain tuple: ``AnalyzeOutputs(*client.predict(..., api_name="/analyze"))``
    names them. On the page `compare` is the slider's update instead of the pair itself."""

    verdict: str = ""          # the answer in plain words, then the numbers behind it in a details fold (markdown)
    panels: str = ""           # one HTML block: six pictures and the detector-score plot
    compare: object = None     # (analyzed PNG, purified PNG) file paths, or None when nothing was purified
    timings: str = ""          # one line: the device and each stage's milliseconds
    details: dict | None = None  # every number (`analysis_record`): scan metadata, model, attack, results
    report: list | None = None   # [PNG, PDF, JSON] report files, or None when no report was asked for
    probabilities: str = ""    # HTML bars: the answer's probabilities (before / after the defence, tumour type)


class BatchOutputs(NamedTuple):
    """The outputs of "/analyze_batch" (and of the Batch tab's Analyze all button), in their public order."""

    table: object = None       # a table of BATCH_COLUMNS, one row per file (per slice of a volume), in upload order
    csv: str | None = None     # the same table as a CSV file (without the pictures)
    status: str = ""           # one line: counts, settings, device, seconds


@dataclass(frozen=True)
class AnalysisView:
    """Everything one analysis shows, gathered once: the scan as read, the pipeline's results, what was asked
    and the model's facts. Built by the app, read by the pure functions below."""

    image: np.ndarray          # the original scan (H, W) in [0, 1]
    meta: dict                 # the reader's metadata (only the non-identifying keys are ever shown)
    result: object             # ScanResult of the whole pipeline on the analyzed scan
    clean: object | None       # ScanResult of the clean pass (None without an attack)
    attack: object             # medfedpure.attack_workflow.AttackSpec
    hospital: int
    defence: bool
    purify: str
    class_names: tuple
    quantiles: tuple
    statistic: str | None = None
    target_fpr: float | None = None
    background_fraction: float | None = None
    model: dict = field(default_factory=dict)
    device: str = ""
    limits: dict = field(default_factory=dict)
    hospital_name: str = ""    # what the page calls the hospital ("simulated hospital 1", "TCGA site DU")

    @property
    def scan_id(self) -> str:
        return scan_id(self.image)

    @property
    def blank(self) -> bool:
        return bool(np.ptp(self.image) == 0)

    @property
    def unknown(self) -> bool:
        """No diagnosis is shown: the image is blank or unlike every training scan."""
        return self.blank or getattr(self.result, "in_distribution", None) is False

    @property
    def type_probabilities(self) -> dict | None:
        """The tumour-type probabilities when they mean something (a tumour answer on a known kind of scan)."""
        probs = getattr(self.result, "tumour_type_probabilities", None)
        return probs if probs and not self.unknown and is_tumour(self.result.final_prediction) else None

    def probabilities(self, final: bool) -> dict:
        values = self.result.final_probabilities if final else self.result.probabilities
        return dict(zip(self.class_names, map(float, values)))


META_SHOWN = ("format", "mode", "width", "height", "frames", "frame", "plane", "volumes", "modality", "pixel_spacing",
              "slice_thickness", "bits_stored", "window", "size")
SIDE_WORDS = {"R": "the subject's right", "L": "the subject's left", "A": "anterior (front)",
              "P": "posterior (back)", "S": "superior (top of the head)", "I": "inferior (towards the feet)"}


def clean_meta(meta: dict) -> dict:
    """The non-identifying technical metadata (the reader's META_KEYS we show) as JSON-safe values; the frame
    (a volume's slice) counts from 1, as everywhere on the page."""
    out = {k: meta.get(k) for k in META_SHOWN}
    if out.get("frame") is not None:
        out["frame"] = int(out["frame"]) + 1
    return jsonable(out)


def side_labels(meta: dict) -> tuple | None:
    """(left, right, top, bottom) letters of a volume's slice as shown (radiological convention), else None."""
    plane = meta.get("plane")
    if not plane:
        return None
    from medfedpure.nifti import SIDE_LABELS

    return SIDE_LABELS.get(plane)


def scan_place(meta: dict, short: bool = False) -> str:
    """Where in its file the scan is: "sagittal slice 45 of 120" ("sagittal 45 of 120" short), "frame 3 of 5",
    or "" for a single picture."""
    frames, frame = meta.get("frames") or 1, meta.get("frame")
    if meta.get("plane"):
        return f"{meta['plane']}{'' if short else ' slice'} {int(frame or 0) + 1} of {frames}"
    if frames > 1:
        return f"frame {int(frame or 0) + 1} of {frames}"
    return ""


def _spacing(values) -> str:
    vals = [f"{float(v):.2g}" if float(v) < 1 else f"{float(v):.3g}" for v in values]
    return (vals[0] if len(set(vals)) == 1 else " x ".join(vals)) + " mm"


def meta_markdown(meta: dict, sid: str) -> str:
    """What the upload preview says about a scan: format, size, frame or slice, modality, window; never a name or
    a tag."""
    volume = bool(meta.get("plane"))
    bits = [f"{meta.get('format') or '?'}" + (" volume" if volume else ""),
            f"{meta.get('width')} x {meta.get('height')} px"]
    place = scan_place(meta)
    if place:
        bits.append(place)
    if meta.get("modality"):
        bits.append(f"modality {meta['modality']}")
    if meta.get("bits_stored"):
        bits.append(f"{meta['bits_stored']}-bit")
    if meta.get("pixel_spacing"):
        bits.append(f"pixels {_spacing(meta['pixel_spacing'])}")
    window = meta.get("window")
    if volume and isinstance(window, dict):
        bits.append(f"brightness window from {window.get('source', 'the volume')}")
    elif isinstance(window, dict) and window.get("center") is not None:
        bits.append(f"window C {window['center']:.4g} / W {window['width']:.4g} ({window.get('source', '?')})")
    elif isinstance(window, dict):
        bits.append(f"window: {window.get('source', 'auto')}")
    sides = side_labels(meta)
    if sides:
        bits.append("shown as radiologists view it (" + ", ".join(f"{k} = {SIDE_WORDS[k]}" for k in sides) + ")")
    text = (f"**Loaded {sid}** (named by a hash of its pixels; the file itself was deleted once read): "
            + ", ".join(bits) + ".")
    if (meta.get("volumes") or 1) > 1:
        text += (f"  \n**This file holds {meta['volumes']} volumes (4-D); only the first one is used.**")
    return text


def scan_info(scan) -> str:
    """The upload preview's line about an `io.Scan`."""
    return meta_markdown(scan.meta, scan_id(scan.image))


def batch_loaded(items) -> str:
    """What the Batch tab says after an upload: items are (file number, Loaded or None, error or None)."""
    good = [(i, ld) for i, ld, _ in items if ld is not None]
    lines = [f"**{len(items)} file(s) loaded** (read into memory; the files themselves were deleted): "
             + (", ".join(f"file {i}: {scan_id(ld.image)}" + (f" ({ld.frames} {'slices' if ld.scan.meta.get('plane') else 'frames'})"
                                                              if ld.frames > 1 else "")
                          for i, ld in good) or "none readable")]
    lines += [f"file {i}: cannot be read: {err}" for i, ld, err in items if ld is None]
    if any(ld.frames > 1 for _, ld in good):
        lines.append("Volumes and multi-frame files: choose the plane and the slices below (default: the middle "
                     "one); each slice gets a row.")
    return "  \n".join(lines)


def _sides_html(sides) -> str:
    if not sides:
        return ""
    spots = ("mfp-side-l", "mfp-side-r", "mfp-side-t", "mfp-side-b")
    return "".join(f"<span class='mfp-side {cls}' title='{html.escape(SIDE_WORDS[k])}'>{k}</span>"
                   for cls, k in zip(spots, sides))


def preview_html(image: np.ndarray, sides=None) -> str:
    """The upload preview; a volume's slice carries its side letters (R/L, A/P, S/I) around it."""
    return (f"<div class='mfp-preview'><div class='mfp-sides'><img alt='preview of the loaded scan' "
            f"src='{data_uri(gray_rgb(image))}'>{_sides_html(sides)}</div></div>")


def model_record(pipe) -> dict:
    """Where the weights came from, for reports: Hub repo and commit, or the bundled/local folder's name only
    (a report never carries a path of the machine that served it)."""
    src = getattr(pipe, "source", None)
    origin = getattr(src, "origin", None)
    record = {"origin": origin, "repo_id": getattr(src, "repo_id", None), "revision": getattr(src, "revision", None)}
    if origin in ("hub", "hub-cache", "bundled"):
        record["description"] = pipe.source_description
    else:
        record["description"] = f"{origin or 'local'} checkpoint folder {Path(str(getattr(src, 'path', ''))).name}"
    return record


def analysis_verdict(v: AnalysisView) -> str:
    return verdict(v.result, defence=v.defence, attack=v.attack.name, eps=v.attack.eps, quantiles=list(v.quantiles),
                   clean_prediction=v.clean.prediction if v.clean is not None else None, statistic=v.statistic,
                   target_fpr=v.target_fpr, background_fraction=v.background_fraction, blank=v.blank)


def plain_text(markdown: str) -> str:
    """The verdict's markdown as plain text (the report's JSON and picture)."""
    text = markdown.replace("**", "").replace("### ", "")
    return (text.replace("<details><summary>", "").replace("</summary>", ":").replace("</details>", "")
            .replace("\n\n\n", "\n\n").strip())


def _purified_panel(v: AnalysisView) -> Panel:
    res = v.result
    if res.purified is not None:
        return Panel(f"Purified (depth t* = {res.t_star})", res.purified,
                     "flagged, so noised and redrawn" if res.flagged else "purified because 'purify always' is on",
                     side_labels(v.meta))
    if not v.defence:
        return Panel("Purified", None, "Defence off: nothing is purified.")
    return Panel("Purified", None, "Not purified: the scan did not look attacked. Tick 'Purify always' to purify "
                                   "anyway.")


def analysis_panels(v: AnalysisView) -> list[Panel]:
    """The six pictures: original, analyzed scan, perturbation, MAE reconstruction, detector map, purified."""
    res, attacked = v.result, v.attack.active
    stats = perturbation_stats(v.image, res.input)
    pert_img, factor = perturbation_image(v.image, res.input, scale=v.attack.eps if attacked else None)
    psnr = "" if not np.isfinite(stats["psnr_db"]) else f"; PSNR {stats['psnr_db']:.0f} dB (higher: less visible)"
    norms = f"largest pixel change {stats['linf'] * 255:.1f}/255 (L-inf){psnr}"
    sides = side_labels(v.meta)
    place = scan_place(v.meta)
    return [
        Panel("Original" + (f" ({place})" if place else ""), v.image, "", sides),
        Panel(f"Analyzed scan ({v.attack.title} attack)", res.input, norms, sides) if attacked else
        Panel("Analyzed scan", None, "No attack: the original itself is analyzed."),
        Panel(f"What the attack changed, amplified x{factor:.0f}", pert_img,
              "red: brighter, blue: darker, white: unchanged") if attacked else
        Panel("What the attack changed", None, "No attack: nothing changed."),
        Panel("Detector's redrawing (masked autoencoder)", res.reconstruction, "", sides),
        Panel("Detector map", error_overlay(res.input, res.error_map), "bright: what raises the detector score"),
        _purified_panel(v),
    ]


def analysis_bars(v: AnalysisView) -> str:
    """The probability bars of the answer column: before the defence, the final answer, the tumour type."""
    res = v.result
    muted_note = ("Not meaningful: the image is blank." if v.blank else
                  "Not meaningful: the scan is unlike every training scan." if v.unknown else "")
    final_label = "Final answer (after the defence)" if v.defence else "Answer (defence off: the classifier's own)"
    same = "Nothing was purified, so it equals the answer before the defence." \
        if v.defence and res.purified is None else ""
    bars = bars_html(final_label, v.probabilities(True), muted_note, muted=v.unknown)
    if v.type_probabilities:
        bars += bars_html("Tumour type (the answer is tumour)", v.type_probabilities)
    if v.defence:
        bars += bars_html("Classifier on the analyzed scan (before the defence)", v.probabilities(False),
                          muted_note or same, muted=v.unknown)
    return f"<div class='mfp-answer-bars'>{bars}</div>"


def analysis_html(v: AnalysisView, panels: list[Panel]) -> str:
    """The page's result block: the panels and the detector-score plot."""
    res = v.result
    quantiles = list(v.quantiles)
    svg = score_svg(quantiles, res.threshold, res.score, v.clean.score if v.clean is not None else None)
    return (panels_html(panels) + "<div class='mfp-row'><div><div class='mfp-title'>Detector score vs this "
            f"hospital's clean scans ({percentile_phrase(res.score, quantiles)})</div>{svg}</div></div>")


def analysis_record(v: AnalysisView, verdict_text: str) -> dict:
    """Every number of one analysis (the details JSON and the report's JSON); names the scan by its hash only.
    Frames and slices count from 1."""
    sid = v.scan_id
    return {
        "disclaimer": DISCLAIMER, "scan": {"id": sid, **clean_meta(v.meta)}, "model": v.model,
        "hospital": v.hospital, "hospital_name": v.hospital_name or f"hospital {v.hospital}",
        "class_names": list(v.class_names), "device": v.device,
        "attack": v.attack.record(), "defence": {"on": v.defence, "purify": v.purify},
        "perturbation": perturbation_stats(v.image, v.result.input),
        "clean": None if v.clean is None else {**v.clean.summary(), "name": sid},
        "result": {**v.result.summary(), "name": sid},
        "clean_percentile": clean_percentile(v.result.score, list(v.quantiles)),
        "detector": {"statistic": v.statistic, "target_fpr": v.target_fpr},
        "diagnosis_shown": not v.unknown, "blank": v.blank,
        "verdict": plain_text(verdict_text), "limits": v.limits,
    }


def report_info(v: AnalysisView, record: dict) -> dict:
    """What `report_image` draws besides the panels (see there), from the view and its record."""
    attack = v.attack
    place = scan_place(v.meta)
    header = (f"{v.hospital_name or f'hospital {v.hospital}'}" + (f" | {place}" if place else "")
              + f" | attack: {attack.title if attack.active else 'none'}"
              + (f" ({attack.eps * 255:.1f}/255)" if attack.active else "")
              + f" | defence {'on' if v.defence else 'off'} ({v.purify}) | model: {v.model.get('description')}")
    return {"name": v.scan_id, "verdict": record["verdict"], "probabilities": v.probabilities(False),
            "final_probabilities": v.probabilities(True),
            "final_label": "final answer" if v.defence else "answer (defence off)",
            "type_probabilities": v.type_probabilities, "score": v.result.score, "threshold": v.result.threshold,
            "quantiles": list(v.quantiles), "clean_score": v.clean.score if v.clean is not None else None,
            "header": header, "timings_ms": record.get("timings_ms"), "device": v.device}


def batch_status(rows: list[dict], *, hospital: str, attack: str, defence: bool, purify: str, device: str,
                 seconds: float) -> str:
    """The Batch tab's one-line summary of its table."""
    n_err = sum(1 for r in rows if str(r["status"]).startswith("error"))
    n_flag = sum(1 for r in rows if r["flagged"] == "yes")
    n_unknown = sum(1 for r in rows if "no diagnosis" in str(r["status"]))
    files = len({r["file"] for r in rows})
    what = f"{len(rows)} file(s)" if files == len(rows) else f"{len(rows)} slices of {files} file(s)"
    return (f"{what}: {len(rows) - n_err} analyzed, {n_err} error(s); {n_flag} flagged as suspicious"
            + (f"; {n_unknown} without a diagnosis (not a brain MRI slice the model knows, or blank)"
               if n_unknown else "")
            + f". {str(hospital)[:1].upper() + str(hospital)[1:]}, attack: {attack}, defence "
            f"{'on' if defence else 'off'} ({purify}); device {device}; {seconds:.1f} s.")
