"""What one request to the demo app computes, from a checked `AnalyzeRequest` to the endpoint's named outputs.

- `analyze_scan`: one scan through `attack_workflow.analyze_attacked` (clean pass, label, attack, the whole
  pipeline), then the page's pictures and texts (`app_render.AnalysisView` and its pure functions), the slider's
  two PNGs and the PNG/PDF/JSON report -> `AnalyzeOutputs`.
- `analyze_scans`: many scans in chunks through the same workflow -> `BatchOutputs` (a bad chunk gets error rows,
  the others still count).

Progress and the time budget come from the request's `app_progress.Tracker`; the attack workflow's stages are
reported as its stages ("PGD attack: step 3 of 10"). No gradio here: the app turns the outputs into page updates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medfedpure import app_render as render
from medfedpure.app_progress import Stopped, Tracker
from medfedpure.app_render import AnalyzeOutputs, BatchOutputs
from medfedpure.app_request import AnalyzeRequest, UserError
from medfedpure.attack_workflow import AttackSpec, analyze_attacked

__all__ = ["BATCH_CHUNK", "analyze_scan", "analyze_scans", "background_fraction", "stage_reporter"]

log = logging.getLogger("medfedpure.app")
BATCH_CHUNK = 16


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def background_fraction(pipe, image, meta: dict) -> float | None:
    """For a background statistic: the share of the scan's own pixels (not the black bars that square it) that
    the detector looks at. Near 0, the detector cannot judge the scan, and the page says so."""
    if getattr(pipe, "statistic", None) not in render.BACKGROUND_STATISTICS:
        return None
    try:
        import torch

        from medfedpure.detector import background_region

        region = background_region(torch.from_numpy(np.asarray(image))[None, None])[0, 0].numpy()
        size = region.shape[0]
        h, w = int(meta.get("height") or size), int(meta.get("width") or size)
        nh, nw = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
        top, left = (size - nh) // 2, (size - nw) // 2
        return float(region[top:top + nh, left:left + nw].mean())
    except Exception:  # noqa: BLE001 - an explanation only
        return None


def stage_reporter(tracker: Tracker, spec: AttackSpec, prefix: str = "", clean: str = "the clean scan"):
    """The attack workflow's stages as the tracker's stages, each counting its model's calls."""
    def on_stage(stage: str, total: int):
        if stage == "clean":
            tracker.stage(f"{prefix}classifying {clean}")
        elif stage == "attack":
            tracker.stage(f"{prefix}{spec.title} attack", total, spec.counted_model)
        else:
            tracker.stage(f"{prefix}detecting, purifying if needed, classifying", total, "unet",
                          label="purification step")
    return on_stage


def _view(pipe, sc, req: AnalyzeRequest, run, limits: dict, hospital_name: str = "") -> render.AnalysisView:
    res = run.result[0]
    return render.AnalysisView(
        image=sc.image, meta=sc.meta, result=res, clean=None if run.clean is None else run.clean[0],
        attack=req.attack, hospital=req.hospital, defence=req.defence, purify=req.purify,
        class_names=tuple(pipe.class_names), quantiles=tuple(pipe.clean_quantiles(req.hospital)),
        statistic=getattr(pipe, "statistic", None),
        target_fpr=(getattr(pipe, "detector_config", None) or {}).get("target_fpr"),
        background_fraction=background_fraction(pipe, res.input, sc.meta), model=render.model_record(pipe),
        device=run.result.device, limits=limits, hospital_name=hospital_name)


def analyze_scan(pipe, sc, req: AnalyzeRequest, tracker: Tracker, *, outdir: Callable[[], Path], t0: float,
                 limits: dict, hospital_name: str = "") -> AnalyzeOutputs:
    """One scan (`io.Scan`) -> AnalyzeOutputs. outdir(): a fresh folder for this request's files, asked for only
    when a file is written. limits: the server's limits, recorded in the details. hospital_name: what the page
    calls the hospital. Raises UserError when the models fail (one plain message; the app keeps serving) and
    Stopped when the request is stopped."""
    import torch

    timings = {"read": _ms(t0)}
    try:
        run = analyze_attacked(pipe, torch.from_numpy(sc.image)[None, None], req.hospital, req.attack,
                               purify=req.purify, seed=req.seed, on_stage=stage_reporter(tracker, req.attack),
                               colours=[sc.meta.get("colour_fraction")])
    except (Stopped, UserError):
        raise
    except Exception as exc:  # noqa: BLE001 - one clear message in the page, the app keeps serving
        log.exception("analysis failed")
        raise UserError(f"The analysis failed ({type(exc).__name__}); the app keeps serving.") from None
    res = run.result[0]
    timings.update(run.timings_ms)
    timings.update({k: v for k, v in res.timings_ms.items() if k != "total"})
    tracker.stage("drawing the figures")
    t_render = time.perf_counter()
    view = _view(pipe, sc, req, run, limits, hospital_name)
    verdict = render.analysis_verdict(view)
    panels = render.analysis_panels(view)
    record = render.analysis_record(view, verdict)
    folder = outdir() if req.make_report or res.purified is not None else None
    pair = None
    if res.purified is not None:  # the before/after slider's two pictures
        pair = (folder / "analyzed.png", folder / "purified.png")
        for path, image in zip(pair, (res.input, res.purified)):
            path.write_bytes(render.png_bytes(render.gray_rgb(image)))
        pair = tuple(map(str, pair))
    page = render.analysis_html(view, panels)
    bars = render.analysis_bars(view)
    timings["render"] = _ms(t_render)
    files = None
    if req.make_report:
        t_report = time.perf_counter()
        record["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}  # the report's own time excluded
        image = render.report_image(panels, render.report_info(view, record))
        files = [str(f) for f in render.write_report(folder, f"medfedpure-{view.scan_id}", image, record)]
        timings["report"] = _ms(t_report)
    timings["total"] = _ms(t0)
    record["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
    return AnalyzeOutputs(verdict, page, pair, render.timings_markdown(record["timings_ms"], view.device),
                          render.jsonable(record), files, bars)


def analyze_scans(pipe, items, req: AnalyzeRequest, tracker: Tracker, *, csv_path: Path,
                  t0: float, hospital_name: str = "") -> BatchOutputs:
    """items: (file number from 1, app_files.Loaded or None, error or None) each, one per slice of a volume ->
    BatchOutputs (rows numbered from 1), the CSV at csv_path."""
    import pandas as pd
    import torch

    rows = [render.batch_row(i, error=err, file=number) if loaded is None else None
            for i, (number, loaded, err) in enumerate(items, start=1)]
    good = [(pos, number, loaded.scan) for pos, (number, loaded, _) in enumerate(items) if loaded is not None]
    for start in range(0, len(good), BATCH_CHUNK):
        chunk = good[start:start + BATCH_CHUNK]
        span = (f"scans {start + 1}-{start + len(chunk)} of {len(good)}" if len(good) > BATCH_CHUNK else
                f"{len(good)} scans")
        message = None
        try:
            x = torch.from_numpy(np.stack([sc.image for _, _, sc in chunk]))[:, None]
            stages = stage_reporter(tracker, req.attack, f"batch, {span}: ", "the clean scans")
            results = list(analyze_attacked(pipe, x, req.hospital, req.attack, purify=req.purify, seed=req.seed,
                                            on_stage=stages,
                                            colours=[sc.meta.get("colour_fraction") for _, _, sc in chunk]).result)
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - these rows fail, the others still count
            log.error("batch chunk failed: %s", type(exc).__name__)
            results = [None] * len(chunk)
            message = f"analysis failed ({type(exc).__name__})"
        for (pos, number, sc), res in zip(chunk, results):
            rows[pos] = render.batch_row(pos + 1, res, file=number, place=render.scan_place(sc.meta, short=True),
                                         scan=render.scan_id(sc.image), blank=bool(np.ptp(sc.image) == 0),
                                         error=message, picture=render.thumbnail(sc.image))
    render.write_batch_csv(rows, csv_path)
    status = render.batch_status(rows, hospital=hospital_name or f"hospital {req.hospital}",
                                 attack=req.attack.title if req.attack.active else "none", defence=req.defence,
                                 purify=req.purify, device=str(pipe.device), seconds=time.perf_counter() - t0)
    return BatchOutputs(pd.DataFrame(rows, columns=render.BATCH_COLUMNS), str(csv_path), status)
