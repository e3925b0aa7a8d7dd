"""The Gradio app end to end through gradio_client: /analyze (JPEG, DICOM, bad file), /analyze_batch, reports.

The app runs in this process on a free port with the real bundled checkpoints when present, else with an untrained
tiny checkpoint built into a temp folder (predictions meaningless, plumbing identical).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "assets" / "examples"
REAL_CHECKPOINT = REPO_ROOT / "pretrained" / "classifier" / "model.safetensors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_source(tmp_root: Path) -> str | None:
    """None (the bundled pretrained/) when the real checkpoints are there, else a freshly built tiny one."""
    if REAL_CHECKPOINT.is_file():
        return None
    script = REPO_ROOT / "scripts" / "make_tiny_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.make_tiny_checkpoint(tmp_root / "tiny"))


def import_app():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app

    return app


def make_dicom(path: Path, frames: int = 3, size: int = 96) -> Path:
    """An MR, MONOCHROME2, 16-bit multi-frame DICOM with a bright disc (a different radius per frame)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    yy, xx = np.mgrid[:size, :size]
    arr = np.stack([((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (10 + 8 * f) ** 2) * 3000 + 200
                    for f in range(frames)]).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Doe^Jane"  # must never reach the page or a report
    ds.PatientID = "SECRET-ID-123"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = size, size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1600, 3200
    ds.PixelSpacing = [0.9, 0.9]
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).NumberOfFrames == frames
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(gradio_client.Client, app module, pipeline) for an app served on 127.0.0.1:<free port>."""
    tmp = tmp_path_factory.mktemp("app")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
    app = import_app()
    pipe = app.load_pipeline(model_source(tmp))
    demo = app.build_demo(pipe, workdir=tmp / "work")
    port = free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, app, pipe
    client.close()
    demo.close()


def _probs(label: dict) -> dict:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def check_analysis(out, pipe, hospital: int = 0) -> dict:
    (orig, adv, pert, pert_md, rec, err, pur, score_img, before, after, verdict, slider, timings, details,
     report) = out
    for path in (orig, adv, rec):
        img = np.asarray(Image.open(path))
        assert img.shape[:2] == (128, 128)
    assert np.asarray(Image.open(err)).shape == (128, 128, 3)
    assert np.asarray(Image.open(pert)).shape == (128, 128, 3)
    assert np.asarray(Image.open(score_img)).std() > 5  # a drawn plot, not a blank canvas
    assert "L-inf" in pert_md and "PSNR" in pert_md
    names = {c.replace("_", " ") for c in pipe.class_names}
    p_before, p_after = _probs(before), _probs(after)
    assert set(p_before) == set(p_after) == names
    assert sum(p_before.values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(p_after.values()) == pytest.approx(1.0, abs=1e-4)
    assert before["label"] == max(p_before, key=p_before.get)
    res = details["result"]
    assert res["hospital"] == hospital
    assert res["flagged"] == (res["score"] > res["threshold"])
    assert res["threshold"] == pytest.approx(pipe.threshold(hospital))
    assert res["probabilities"] == pytest.approx([p_before[c.replace("_", " ")] for c in pipe.class_names], abs=1e-6)
    assert res["final_probabilities"] == pytest.approx([p_after[c.replace("_", " ")] for c in pipe.class_names],
                                                       abs=1e-6)
    assert ("Flagged as suspicious" in verdict) == res["flagged"]
    assert 0.0 <= details["clean_percentile"] <= 100.0
    assert (pur is not None) == (res["t_star"] > 0) == (res["purified_probabilities"] is not None)
    assert len(slider) == 2 and all(Path(p).is_file() for p in slider)
    assert "Device" in timings and details["device"] in timings
    if report is not None:
        assert sorted(Path(p).suffix for p in report) == [".json", ".pdf", ".png"]
    assert details["disclaimer"].startswith("Research demo")
    return details


def test_analyze_example_jpeg_with_pgd(served):
    client, app, pipe = served
    out = client.predict(handle_file(EXAMPLES / "y1431.jpg"), 0, "pgd", 0.03, 3, api_name="/analyze")
    details = check_analysis(out, pipe)
    stats = details["perturbation"]
    assert 0 < stats["linf"] <= 0.03 + 1e-6  # projected onto the eps-ball
    assert stats["l2"] > 0 and 20 < stats["psnr_db"] < 80
    assert details["attack"]["name"] == "pgd" and details["clean"] is not None
    assert details["scan"]["id"].startswith("scan-") and details["scan"]["width"] == 319
    # the report names the scan by its hash, never by the uploaded file's name
    report = {Path(p).suffix: Path(p) for p in out[-1]}
    assert report[".png"].name == f"medfedpure-{details['scan']['id']}.png"
    assert report[".pdf"].read_bytes()[:5] == b"%PDF-"
    saved = json.loads(report[".json"].read_text())
    assert saved["result"]["score"] == pytest.approx(details["result"]["score"])
    assert "y1431" not in report[".json"].read_text() and "y1431" not in report[".pdf"].read_bytes().decode("latin-1")
    assert np.asarray(Image.open(report[".png"])).std() > 10


def test_analyze_dicom_frame_and_purify_always(served, tmp_path):
    client, app, pipe = served
    dcm = make_dicom(tmp_path / "series_0001.dcm", frames=3)
    h = pipe.hospitals[-1]
    out = client.predict(handle_file(dcm), h, "none", 0.03, 1, True, True, 7, 2, api_name="/analyze")
    details = check_analysis(out, pipe, hospital=h)
    assert details["scan"]["format"] == "DICOM" and details["scan"]["frames"] == 3 and details["scan"]["frame"] == 2
    assert details["scan"]["modality"] == "MR" and details["scan"]["bits_stored"] == 12
    assert details["perturbation"]["linf"] == 0 and details["perturbation"]["psnr_db"] == "inf"
    assert details["defence"] == {"on": True, "purify": "always"}
    assert details["result"]["t_star"] > 0 and out[6] is not None  # purified even if not flagged
    text = json.dumps(details) + "".join(Path(p).read_bytes().decode("latin-1") for p in out[-1])
    assert "Doe" not in text and "SECRET-ID" not in text and "series_0001" not in text


def test_bad_file_is_a_clear_error_and_the_app_keeps_serving(served, tmp_path):
    from gradio_client.exceptions import AppError

    client, app, pipe = served
    bad = tmp_path / "notes.png"
    bad.write_text("this is a text file, not a scan\n")
    with pytest.raises(AppError, match=r"notes\.png: .*not an image"):
        client.predict(handle_file(bad), 0, api_name="/analyze")
    with pytest.raises(AppError, match=r"frame"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 0, "none", 0.03, 1, True, False, 0, 5, api_name="/analyze")
    with pytest.raises(AppError, match=r"Unknown hospital 99; this checkpoint has hospitals"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 99, api_name="/analyze")
    with pytest.raises(AppError, match=r"Unknown attack 'cw'"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), "0", "cw", api_name="/analyze")
    with pytest.raises(AppError, match=r"Upload a scan"):
        client.predict(None, 0, api_name="/analyze")
    # the next request is answered normally (hospital given as text works too, attack names are case-blind)
    out = client.predict(handle_file(EXAMPLES / "no35.jpg"), "0", "FGSM", 0.02, api_name="/analyze")
    details = check_analysis(out, pipe)
    assert details["perturbation"]["linf"] == pytest.approx(0.02, abs=1e-5)


def test_defence_off_never_purifies(served):
    client, app, pipe = served
    out = client.predict(handle_file(EXAMPLES / "no411.jpg"), 0, "none", 0.03, 1, False, True, make_report=False,
                         api_name="/analyze")
    assert out[-1] is None  # no report asked for
    details = check_analysis(out[:-1] + (None,), pipe)
    assert details["defence"] == {"on": False, "purify": "never"}
    assert details["result"]["t_star"] == 0 and out[6] is None
    assert details["result"]["final_probabilities"] == details["result"]["probabilities"]
    assert "Defence is off" in out[10]


def test_batch_with_a_bad_file(served, tmp_path):
    client, app, pipe = served
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing behind it
    dcm = make_dicom(tmp_path / "slice.dcm", frames=1)
    files = [handle_file(p) for p in (EXAMPLES / "y1349.jpg", bad, dcm)]
    table, csv_path, status = client.predict(files, 0, api_name="/analyze_batch")
    headers, rows = table["headers"], table["data"]
    assert headers == app.render.BATCH_COLUMNS
    assert len(rows) == 3
    by_file = {r[0]: dict(zip(headers, r)) for r in rows}
    assert [r[0] for r in rows] == ["y1349.jpg", "broken.png", "slice.dcm"]  # upload order kept
    assert "broken.png" in by_file["broken.png"]["error"] and by_file["broken.png"]["prediction"] == ""
    for name in ("y1349.jpg", "slice.dcm"):
        row = by_file[name]
        assert row["error"] == "" and row["scan_id"].startswith("scan-")
        assert row["prediction"] in {c.replace("_", " ") for c in pipe.class_names}
        assert row["flagged"] == (row["score"] > row["threshold"])
        assert 0.5 <= row["p_final"] <= 1.0
    assert "2 analysed, 1 error" in status
    with open(csv_path, newline="") as handle:
        saved = list(csv.DictReader(handle))
    assert [r["file"] for r in saved] == ["y1349.jpg", "broken.png", "slice.dcm"]
    assert saved[1]["error"] and not saved[0]["error"]
    assert float(saved[0]["score"]) == pytest.approx(by_file["y1349.jpg"]["score"], rel=1e-5)


def test_batch_with_attack_and_no_files(served):
    from gradio_client.exceptions import AppError

    client, app, pipe = served
    files = [handle_file(EXAMPLES / "no427.jpg"), handle_file(EXAMPLES / "y1493.jpg")]
    table, _, status = client.predict(files, 0, "fgsm", 0.03, api_name="/analyze_batch")
    assert len(table["data"]) == 2 and "2 analysed, 0 error" in status and "attack fgsm" in status
    with pytest.raises(AppError, match="Upload one or more scans"):
        client.predict([], 0, api_name="/analyze_batch")


def test_page_and_api_info(served):
    client, app, pipe = served
    info = client.view_api(print_info=False, return_format="dict")
    endpoints = info["named_endpoints"]
    assert "/analyze" in endpoints and "/analyze_batch" in endpoints
    names = [p["parameter_name"] for p in endpoints["/analyze"]["parameters"]]
    assert names[:5] == ["scan", "hospital", "attack", "eps", "steps"]
    assert names[5:] == ["defence", "purify_always", "seed", "frame", "eot", "make_report"]
    assert len(endpoints["/analyze"]["returns"]) == 15
    import urllib.request

    html = urllib.request.urlopen(client.src, timeout=30).read().decode()
    assert "MedFedPure" in html


def test_render_helpers():
    from medfedpure import app_render as r

    q = list(np.linspace(0.1, 0.2, 21))
    assert r.clean_percentile(0.05, q) == 0 and r.clean_percentile(0.3, q) == 100
    assert r.clean_percentile(0.15, q) == pytest.approx(50, abs=1e-6)
    assert "every one" in r.percentile_phrase(0.3, q) and "about 50%" in r.percentile_phrase(0.15, q)
    a = np.zeros((8, 8), np.float32)
    b = a.copy()
    b[0, 0] = 0.5
    s = r.perturbation_stats(a, b)
    assert s["linf"] == 0.5 and s["l2"] == pytest.approx(0.5)
    assert s["psnr_db"] == pytest.approx(10 * np.log10(64 / 0.25))  # MSE 0.25 / 64
    img, factor = r.perturbation_image(a, b)
    assert img.shape == (8, 8, 3) and factor == pytest.approx(2.0)
    assert r.error_overlay(a, np.abs(b)).shape == (8, 8, 3)
    assert r.scan_id(a) == r.scan_id(a.copy()) != r.scan_id(b)
    assert r.jsonable({"x": float("inf"), "y": np.float32(1.5)}) == {"x": "inf", "y": 1.5}


def test_upload_preview_and_frame_picker(served, tmp_path):
    client, app, pipe = served
    ui = app.DemoApp(pipe, tmp_path / "work")
    dcm = make_dicom(tmp_path / "multi.dcm", frames=5)
    preview, info, slider = ui.inspect(str(dcm))
    assert Image.open(preview).size == (128, 128)
    assert slider["visible"] is True and slider["minimum"] == 0 and slider["maximum"] == 4
    assert slider["value"] == 2  # the reader's default: the middle frame
    assert "DICOM" in info and "frame 3 of 5" in info and "MR" in info and "window" in info
    assert "Doe" not in info and "SECRET" not in info
    preview4, info4 = ui.preview_frame(str(dcm), 4)
    assert "frame 5 of 5" in info4 and np.asarray(Image.open(preview4)).mean() > np.asarray(Image.open(preview)).mean()
    _, info1, slider1 = ui.inspect(str(EXAMPLES / "no35.jpg"))
    assert slider1["visible"] is False and slider1["value"] == -1 and "JPEG" in info1
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01" * 10)
    with pytest.warns(UserWarning, match=r"bad\.dcm"):  # gr.Warning outside a request falls back to warnings.warn
        none, message, hidden = ui.inspect(str(bad))
    assert none is None and "bad.dcm" in message and hidden["visible"] is False


def test_model_summary_reads_the_card_and_survives_its_absence(tmp_path):
    from types import SimpleNamespace

    app = import_app()
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "config.json").write_text(json.dumps(
        {"mode": "moe", "num_experts": 3, "training": {"num-rounds": 20, "num-hospitals": 10, "engine": "simulation"}}))
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ndatasets: [br35h]\n---\n# Card\n\n## Evaluation\n"
                                        "| run | clean |\n|---|---|\n| pgd | 97.00% |\n\n## Licence\nApache\n")
    pipe = SimpleNamespace(source=SimpleNamespace(path=tmp_path, origin="local"), source_description="local folder x",
                           class_names=["no_tumour", "tumour"], hospitals=[0, 1])
    summary, card = app.model_summary(pipe)
    assert "10 hospitals" in summary and "20 federated rounds" in summary and "br35h" in summary
    assert "| pgd | 97.00% |" in summary and "Licence" not in summary and card.startswith("# Card")
    empty = SimpleNamespace(source=SimpleNamespace(path=tmp_path / "nothing"), source_description="somewhere",
                            class_names=["a", "b"], hospitals=[0])
    summary, card = app.model_summary(empty)
    assert "somewhere" in summary and "no model card" in card


def test_adaptive_attack_through_the_whole_defence(served):
    client, app, pipe = served
    out = client.predict(handle_file(EXAMPLES / "y1493.jpg"), 0, "adaptive", 0.02, 1, True, False, 0, -1, 1,
                         False, api_name="/analyze")
    details = check_analysis(out, pipe)
    assert details["attack"]["name"] == "adaptive" and details["attack"]["eot"] == 1
    assert "whole defence" in details["attack"]["threat_model"]
    assert 0 < details["perturbation"]["linf"] <= 0.02 + 1e-6
