"""The Gradio app end to end through gradio_client ("/analyze", "/analyze_batch") and through its callbacks.

The app runs in this process on a free port with the real bundled checkpoints when present, else with an untrained
tiny checkpoint built into a temp folder (predictions meaningless, plumbing identical). What is checked, besides
the numbers: no file name or DICOM tag anywhere (outputs, exports, API errors, log), uploads deleted once read,
report folders deleted at session end and after the keep time, the time budget and the Stop flag, per-step
progress, the out-of-distribution verdict and the tumour type.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "assets" / "examples"
REAL_CHECKPOINT = REPO_ROOT / "pretrained" / "classifier" / "model.safetensors"
IXI = REPO_ROOT.parent / "shared" / "data" / "ixi_t1_healthy" / "volumes"
# A real T1 volume (IXI, 2 mm, stored PSR); a volume nibabel writes stands in when the shared data is absent.
NIFTI = next(iter(sorted(IXI.glob("*.nii.gz"))), None) if IXI.is_dir() else None
SECRET_NAME = "Doe_Jane_MRN-123456"  # an uploaded file's name: must never come back from the app
SECRETS = ("Doe_Jane", "Doe^Jane", "MRN-123456", "SECRET-ID", "Doe", "Jane")


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
    ds.InstitutionName = "MRN-123456 General"
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


def make_nifti(path: Path, volumes: int = 1, secret: bool = True) -> Path:
    """A head-like ellipsoid (48 x 56 x 40 voxels of 2 x 2 x 2.5 mm, RAS) with a bright blob in its right frontal
    part, written by nibabel; its header's free-text field carries a patient's name, which must never come out."""
    import nibabel as nib

    x, y, z = np.mgrid[:48, :56, :40].astype(np.float32)
    head = ((x - 24) / 20) ** 2 + ((y - 28) / 24) ** 2 + ((z - 20) / 17) ** 2 < 1
    data = head * 400.0 + (((x - 32) ** 2 + (y - 40) ** 2 + (z - 22) ** 2) < 25) * 600.0
    if volumes > 1:
        data = np.stack([data * (k + 1) for k in range(volumes)], axis=-1)
    img = nib.Nifti1Image(data.astype(np.int16), np.diag([2.0, 2.0, 2.5, 1.0]))
    if secret:
        img.header["descrip"] = b"Doe^Jane MRN-123456"
        img.header["aux_file"] = b"SECRET-ID"
    nib.save(img, str(path))
    return path


def nifti_file(tmp_path: Path) -> Path:
    """A real IXI T1 volume when the shared data is there, else one nibabel writes."""
    return NIFTI if NIFTI is not None else make_nifti(tmp_path / "synthetic.nii.gz")


def assert_no_secret(text: str, where: str = "") -> None:
    """No part of the uploaded file's name or its identifying DICOM tags in `text`. Inline pictures (base64) and
    binary files (PNG, PDF: decoded as latin-1) are only searched for the long secrets, which cannot occur there
    by chance (a 3-letter word does, in 100 kB of base64)."""
    import re

    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    binary = "%PDF" in text or "\x89PNG" in text or "IHDR" in text
    for s in SECRETS:
        if binary and len(s) < 8:
            continue
        assert s not in text, f"{s!r} leaked into {where or 'the output'}"


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record) + ("\n" + str(record.exc_text) if record.exc_text else ""))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(gradio_client.Client, app module, pipeline, demo) for an app served on 127.0.0.1:<free port>."""
    tmp = tmp_path_factory.mktemp("app")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
    app = import_app()
    pipe = app.load_pipeline(model_source(tmp))
    demo = app.build_demo(pipe)
    port = free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, app, pipe, demo
    client.close()
    demo.close()


@pytest.fixture
def app_log():
    logger = logging.getLogger("medfedpure.app")
    cap = LogCapture()
    logger.addHandler(cap)
    yield cap
    logger.removeHandler(cap)


def details_of(out) -> dict:
    return out[4]


def check_analysis(out, pipe, hospital: int = 0) -> dict:
    verdict, panels, compare, timings, details, report, probabilities = out
    assert panels.count("<figure") == 6 and "data:image/png;base64," in panels
    assert "Final answer (after the defence)" in probabilities or "Answer (defence off" in probabilities
    head = verdict.partition("<details>")[0]  # the plain words come first, the numbers in a fold
    assert head.startswith(("### Answer:", "### No diagnosis")) and "<summary>" in verdict
    assert "<svg" in panels and "detector score" in panels  # the score plot
    for title in ("Original", "redrawing (masked autoencoder)", "Detector map", "Purified"):
        assert title in panels
    res = details["result"]
    assert res["hospital"] == hospital
    assert res["flagged"] == (res["score"] > res["threshold"])
    assert res["threshold"] == pytest.approx(pipe.threshold(hospital))
    assert sum(res["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(res["final_probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert ("Flagged as suspicious" in verdict) == res["flagged"]
    assert ("Not flagged" in verdict) == (not res["flagged"])
    assert 0.0 <= details["clean_percentile"] <= 100.0
    purified = res["t_star"] > 0
    assert purified == (res["purified_probabilities"] is not None)
    if purified:
        assert compare is not None and len(compare) == 2 and all(Path(p).is_file() for p in compare)
        assert "Purified (depth t* =" in panels
    else:
        assert compare is None and "Not purified" in panels or "Defence off" in panels
    assert "Device" in timings and details["device"] in timings and "total" in timings
    if report is not None:
        assert sorted(Path(p).suffix for p in report) == [".json", ".pdf", ".png"]
    assert details["disclaimer"].startswith("Research demo")
    assert "Out-of-distribution check" in verdict or "No diagnosis" in verdict
    return details


def stray_temp_files(demo) -> list[Path]:
    """Empty tmpXXXX files in Gradio's temp folder (its gr.File leaves one per file handed over)."""
    return [p for p in Path(demo.GRADIO_CACHE).glob("tmp*") if p.is_file() and p.stat().st_size == 0]


def upload_names(demo) -> list[str]:
    return [p.name for p in Path(demo.GRADIO_CACHE).rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------ API
def test_analyze_example_jpeg_with_pgd(served, tmp_path):
    client, app, pipe, demo = served
    scan = tmp_path / f"{SECRET_NAME}.jpg"
    scan.write_bytes((EXAMPLES / "y1431.jpg").read_bytes())
    out = client.predict(handle_file(scan), 0, "pgd", 0.03, 3, True, True, api_name="/analyze")
    details = check_analysis(out, pipe)
    stats = details["perturbation"]
    assert 0 < stats["linf"] <= 0.03 + 1e-6  # projected onto the eps-ball
    assert stats["l2"] > 0 and 20 < stats["psnr_db"] < 80
    assert details["attack"]["name"] == "pgd" and details["clean"] is not None
    assert details["scan"]["id"].startswith("scan-") and details["scan"]["width"] == 319
    assert "Analyzed scan (PGD attack)" in out[1] and "amplified" in out[1]
    # after an attack the plain words compare with the clean scan's own answer
    head = out[0].partition("<details>")[0]
    clean = details["clean"]["prediction"].replace("_", " ")
    assert f"from {clean} to" in head or "did not change the classifier's answer" in head
    assert ("The defence restored the clean scan's answer" in head) or ("The defence failed" in head) or (
        f"The answer is the clean scan's ({clean})" in head)
    assert ("The defence failed" in head) == (details["result"]["final_prediction"] != details["clean"]["prediction"])
    # the report names the scan by its hash, never by the uploaded file's name
    report = {Path(p).suffix: Path(p) for p in out[5]}
    assert report[".png"].name == f"medfedpure-{details['scan']['id']}.png"
    assert report[".pdf"].read_bytes()[:5] == b"%PDF-"
    saved = json.loads(report[".json"].read_text())
    assert saved["result"]["score"] == pytest.approx(details["result"]["score"])
    picture = np.asarray(Image.open(report[".png"]).convert("RGB"))
    assert picture.shape[1] == 1100 and picture.std() > 10
    assert_no_secret(json.dumps(out[4]) + out[0] + out[1] + out[3] + out[6], "the outputs")
    assert saved["verdict"].startswith("Answer:") and "<details>" not in saved["verdict"]
    for p in report.values():
        assert_no_secret(p.read_bytes().decode("latin-1"), p.name)
    assert not any(SECRET_NAME in n for n in upload_names(demo)), "the upload outlived its reading"


def test_analyze_dicom_frame_and_purify_always(served, tmp_path):
    client, app, pipe, demo = served
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}.dcm", frames=3)
    h = pipe.hospitals[-1]
    # frames count from 1, as the page does ("frame 3 of 3")
    out = client.predict(handle_file(dcm), h, "none", 0.03, 1, True, True, 7, 3, api_name="/analyze")
    details = check_analysis(out, pipe, hospital=h)
    assert details["scan"]["format"] == "DICOM" and details["scan"]["frames"] == 3 and details["scan"]["frame"] == 3
    assert details["scan"]["modality"] == "MR" and details["scan"]["bits_stored"] == 12
    assert details["perturbation"]["linf"] == 0 and details["perturbation"]["psnr_db"] == "inf"
    assert details["defence"] == {"on": True, "purify": "always"}
    assert details["result"]["t_star"] > 0 and out[2] is not None  # purified even if not flagged
    assert "No attack" in out[1]  # the analyzed-scan panel says why it is empty
    assert_no_secret(json.dumps(details) + out[0] + out[1])
    report = {Path(p).suffix: Path(p) for p in out[5]}
    for p in report.values():
        assert_no_secret(p.read_bytes().decode("latin-1"), p.name)
    assert json.loads(report[".json"].read_text())["scan"]["frame"] == 3  # the report's JSON counts from 1 too
    assert not any(SECRET_NAME in n for n in upload_names(demo))


def test_bad_files_and_settings_are_one_line_errors_naming_no_file(served, tmp_path, app_log, capfd):
    from gradio_client.exceptions import AppError

    client, app, pipe, demo = served
    bad = tmp_path / f"{SECRET_NAME}.png"
    bad.write_text("this is a text file, not a scan\n")
    with pytest.raises(AppError, match=r"not an image file") as err:
        client.predict(handle_file(bad), 0, api_name="/analyze")
    assert_no_secret(str(err.value), "the API error")
    with pytest.raises(AppError, match=r"Frame 5 does not exist: the file has only frame 1"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 0, "none", 0.03, 1, True, False, 0, 5, api_name="/analyze")
    # frames count from 1 in every message: a 25-frame file refuses 26 and 99 with its range, and -1
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}_25.dcm", frames=25, size=32)
    for frame, message in ((26, r"Frame 26 does not exist: the file has 25 frames \(1 to 25\)"),
                           (99, r"Frame 99 does not exist: the file has 25 frames \(1 to 25\)"),
                           (-1, r"frame must be 1 or more")):
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(dcm), 0, "none", 0.03, 1, True, False, 0, frame, make_report=False,
                           api_name="/analyze")
    # a broken NIfTI volume: one line, naming no file
    broken = tmp_path / f"{SECRET_NAME}.nii.gz"
    broken.write_bytes(nifti_file(tmp_path).read_bytes()[:3000])
    with pytest.raises(AppError, match=r"^The NIfTI file is truncated or damaged and cannot be read") as err:
        client.predict(handle_file(broken), 0, api_name="/analyze")
    assert "\n" not in str(err.value) and SECRET_NAME not in str(err.value)
    with pytest.raises(AppError, match=r"Unknown plane 'oblique': choose axial, coronal or sagittal"):
        client.predict(handle_file(nifti_file(tmp_path)), 0, plane="oblique", api_name="/analyze")
    with pytest.raises(AppError, match=r"Unknown hospital 99; this checkpoint has hospitals"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 99, api_name="/analyze")
    with pytest.raises(AppError, match=r"Unknown attack 'cw'; choose No attack, FGSM \(one step\)"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), "0", "cw", api_name="/analyze")
    with pytest.raises(AppError, match=r"Upload a scan"):
        client.predict(None, 0, api_name="/analyze")
    lim = app.Limits.for_device(pipe.device)
    with pytest.raises(AppError, match=rf"steps must be between 1 and {lim.steps_max}"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 0, "pgd", 0.03, lim.steps_max + 1, api_name="/analyze")
    with pytest.raises(AppError, match=rf"EOT samples must be between 1 and {lim.eot_max}"):
        client.predict(handle_file(EXAMPLES / "no35.jpg"), 0, "adaptive", 0.03, 1, True, False, 0, 0,
                       lim.eot_max + 1, api_name="/analyze")
    # the next request is answered normally (hospital given as text works too, attack names are case-blind)
    out = client.predict(handle_file(EXAMPLES / "no35.jpg"), "0", "FGSM", 0.02, api_name="/analyze")
    details = check_analysis(out, pipe)
    assert details["perturbation"]["linf"] == pytest.approx(0.02, abs=1e-5)
    # the page's labels are accepted wherever a value is typed: hospital and attack names as the page shows them
    name = demo.app_state.hospital_names[pipe.hospitals[-1]]
    out = client.predict(handle_file(EXAMPLES / "no35.jpg"), name.upper(), "FGSM (one step)", 0.02,
                         make_report=False, api_name="/analyze")
    assert out[4]["hospital"] == pipe.hospitals[-1] and out[4]["hospital_name"] == name
    assert out[4]["attack"]["name"] == "fgsm"
    # the log: one line per user error, no traceback (ours or Gradio's), no file name
    errors = [ln for ln in app_log.lines if "user error" in ln]
    assert len(errors) >= 12 and all("\n" not in ln for ln in errors)
    captured = capfd.readouterr()
    log_text = "\n".join(app_log.lines) + captured.err + captured.out
    assert "Traceback" not in log_text
    assert_no_secret(log_text, "the log")
    assert not any(SECRET_NAME in n for n in upload_names(demo))


def test_defence_off_never_purifies(served):
    client, app, pipe, demo = served
    out = client.predict(handle_file(EXAMPLES / "no411.jpg"), 0, "none", 0.03, 1, False, True, make_report=False,
                         api_name="/analyze")
    assert out[5] is None  # no report asked for
    details = check_analysis(out, pipe)
    assert details["defence"] == {"on": False, "purify": "never"}
    assert details["result"]["t_star"] == 0 and out[2] is None
    assert details["result"]["final_probabilities"] == details["result"]["probabilities"]
    assert "The defence is off" in out[0] and "defence off" in out[0]
    assert "after the defence" not in out[6] and "Answer (defence off" in out[6]
    assert "Defence off: nothing is purified" in out[1]


def test_blank_image_gets_no_diagnosis(served, tmp_path):
    client, app, pipe, demo = served
    blank = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(blank)
    out = client.predict(handle_file(blank), 0, "pgd", 0.03, 2, api_name="/analyze")
    verdict, details = out[0], out[4]
    assert "No diagnosis: the image is blank" in verdict and "Answer:" not in verdict
    assert details["diagnosis_shown"] is False and details["blank"] is True
    assert "Not meaningful" in out[6]


def test_nifti_volume_through_the_api(served, tmp_path):
    """A .nii.gz through "/analyze": the plane and the slice asked for (from 1), an answer, the geometry in the
    details, nothing of the header's free text or the file's name anywhere."""
    client, app, pipe, demo = served
    scan = tmp_path / f"{SECRET_NAME}.nii.gz"
    scan.write_bytes(nifti_file(tmp_path).read_bytes())
    from medfedpure.io import read_scan

    frames = read_scan(scan, plane="sagittal").meta["frames"]
    out = client.predict(handle_file(scan), 0, "none", 0.03, 1, True, False, 0, frames, 1, True, "Sagittal",
                         api_name="/analyze")
    details = check_analysis(out, pipe)
    assert details["scan"]["format"] == "NIfTI" and details["scan"]["plane"] == "sagittal"
    assert details["scan"]["frames"] == frames and details["scan"]["frame"] == frames  # the last slice, from 1
    assert f"Original (sagittal slice {frames} of {frames})" in out[1]
    assert out[1].count("class='mfp-side ") >= 4 and ">S</span>" in out[1] and ">A</span>" in out[1]
    report = {Path(p).suffix: Path(p) for p in out[5]}
    assert json.loads(report[".json"].read_text())["scan"]["frame"] == frames
    assert_no_secret(json.dumps(details) + out[0] + out[1] + out[6], "the outputs")
    for p in report.values():
        assert_no_secret(p.read_bytes().decode("latin-1"), p.name)
    # the default: the axial plane, the middle of the head
    out = client.predict(handle_file(scan), 0, make_report=False, api_name="/analyze")
    middle = read_scan(scan).meta["frame"] + 1
    assert out[4]["scan"]["plane"] == "axial" and out[4]["scan"]["frame"] == middle
    with pytest.raises(Exception, match=rf"Slice {frames + 1} does not exist in the sagittal plane: the file has "
                                        rf"{frames} slices \(1 to {frames}\)"):
        client.predict(handle_file(scan), 0, "none", 0.03, 1, True, False, 0, frames + 1, 1, False, "sagittal",
                       api_name="/analyze")
    assert not any(SECRET_NAME in n for n in upload_names(demo))


def test_nifti_volume_on_the_page(served, tmp_path):
    """Upload a volume: the plane selector and the slice slider appear (the slider at the middle of the head),
    the preview carries its side letters, another plane shows its middle slice, and Analyze reads that slice.
    A 4-D file says that only its first volume is used."""
    client, app, pipe, demo = served
    ui = demo.app_state
    req = _req("nifti")
    volume = make_nifti(tmp_path / "four.nii.gz", volumes=3)
    path = _upload(demo, volume, f"{SECRET_NAME}.nii.gz")
    preview, info, slider, plane, box, *results = ui.inspect(path, req)
    assert not Path(path).exists()
    assert plane["visible"] is True and plane["value"] == "axial"
    assert slider["visible"] is True and slider["minimum"] == 1 and slider["maximum"] == 40
    assert slider["value"] in (20, 21) and "Slice (1 to 40; starts at the middle of the head)" == slider["label"]
    assert "NIfTI volume" in info and "axial slice" in info and "R = the subject's right" in info
    assert "holds 3 volumes (4-D); only the first one is used" in info
    assert ">R</span>" in preview and ">L</span>" in preview and ">A</span>" in preview and ">P</span>" in preview
    assert_no_secret(info + preview)
    new_preview, new_info, new_slider = ui.preview_plane("coronal", req)
    assert new_slider["maximum"] == 56 and new_slider["value"] in range(24, 33) and "coronal slice" in new_info
    assert ">S</span>" in new_preview and ">I</span>" in new_preview
    out = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 10, 1, False, "coronal", None, request=req)
    assert out[4]["scan"]["plane"] == "coronal" and out[4]["scan"]["frame"] == 10 and out[4]["scan"]["volumes"] == 3
    assert "coronal slice 10 of 56" in out[1]
    _, info5 = ui.preview_frame(5, req)
    assert "coronal slice 5 of 56" in info5
    ui.sessions.drop("nifti")


def test_batch_reads_the_slices_asked_for(served, tmp_path):
    client, app, pipe, demo = served
    volume = tmp_path / f"{SECRET_NAME}.nii.gz"
    volume.write_bytes(nifti_file(tmp_path).read_bytes())
    files = [handle_file(volume), handle_file(EXAMPLES / "no35.jpg")]
    table, csv_path, status = client.predict(files, 0, "none", 0.03, 1, True, False, 0, "coronal", "30-40/5",
                                             api_name="/analyze_batch")
    rows = [dict(zip(table["headers"], r)) for r in table["data"]]
    assert [(r["row"], r["file"]) for r in rows] == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert [r["slice"].split(" of ")[0] for r in rows[:3]] == ["coronal 30", "coronal 35", "coronal 40"]
    assert rows[3]["slice"] == "" and all(r["status"] == "ok" for r in rows)
    assert all(r["image"].startswith("![scan](data:image/png;base64,") for r in rows)
    assert "4 slices of 2 file(s): 4 analyzed" in status
    with open(csv_path, newline="") as handle:
        saved = list(csv.DictReader(handle))
    assert "image" not in saved[0] and [r["slice"] for r in saved] == [r["slice"] for r in rows]
    assert [r["flagged"] for r in saved] == [r["flagged"] for r in rows]  # the same values in both
    assert {r["flagged"] for r in saved} <= {"yes", "no"}
    out = client.predict([handle_file(volume)], 0, "none", 0.03, 1, True, False, 0, "axial", "9999",
                         api_name="/analyze_batch")
    assert out[0]["data"][0][out[0]["headers"].index("status")].startswith("error: Slice 9999 does not exist")
    assert_no_secret(json.dumps(table) + status + Path(csv_path).read_text())


def test_batch_with_a_bad_file(served, tmp_path):
    client, app, pipe, demo = served
    bad = tmp_path / f"{SECRET_NAME}.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing behind it
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}_slice.dcm", frames=1)
    files = [handle_file(p) for p in (EXAMPLES / "y1349.jpg", bad, dcm)]
    stray = len(stray_temp_files(demo))
    table, csv_path, status = client.predict(files, 0, api_name="/analyze_batch")
    client.predict(handle_file(EXAMPLES / "no35.jpg"), 0, make_report=False, api_name="/analyze")
    assert len(stray_temp_files(demo)) == stray, "requests leave empty temp files behind"
    headers, rows = table["headers"], table["data"]
    assert headers == app.render.BATCH_COLUMNS
    assert headers.index("status") < 6  # readable without scrolling (the browser test measures it)
    assert [r[0] for r in rows] == [1, 2, 3]  # upload order kept, numbered from 1
    by_row = {r[0]: dict(zip(headers, r)) for r in rows}
    assert [by_row[n]["file"] for n in (1, 2, 3)] == [1, 2, 3]  # each row names its file's number
    assert by_row[2]["status"].startswith("error:") and by_row[2]["answer"] == ""
    for n in (1, 3):
        row = by_row[n]
        assert row["status"] == "ok" and row["scan"].startswith("scan-")
        assert row["answer"] in {c.replace("_", " ") for c in pipe.class_names}
        assert row["flagged"] in ("yes", "no") and row["like training scans"] in ("yes", "no", "")
        assert (row["flagged"] == "yes") == (float(row["score"]) > float(row["threshold"]))
        assert row["sure"].endswith("%") and 50 <= float(row["sure"].strip("<>%")) <= 100
        assert row["image"].startswith("![scan](data:image/png;base64,")
    assert "2 analyzed, 1 error" in status
    text = Path(csv_path).read_text()
    assert_no_secret(json.dumps(table) + status + text, "the batch table or CSV")
    with open(csv_path, newline="") as handle:
        saved = list(csv.DictReader(handle))
    assert [r["row"] for r in saved] == ["1", "2", "3"]
    assert saved[1]["status"].startswith("error") and saved[0]["status"] == "ok"
    assert saved[0]["score"] == by_row[1]["score"] and saved[0]["flagged"] == by_row[1]["flagged"]
    assert set(saved[0]) == set(app.render.CSV_COLUMNS)
    assert not any(SECRET_NAME in n for n in upload_names(demo))


def test_batch_with_attack_and_no_files(served):
    from gradio_client.exceptions import AppError

    client, app, pipe, demo = served
    files = [handle_file(EXAMPLES / "no427.jpg"), handle_file(EXAMPLES / "y1493.jpg")]
    table, _, status = client.predict(files, 0, "fgsm", 0.03, api_name="/analyze_batch")
    assert len(table["data"]) == 2 and "2 analyzed, 0 error" in status and "attack: FGSM" in status
    assert "Simulated hospital 1" in status or "Hospital 0" in status
    with pytest.raises(AppError, match="Upload one or more scans"):
        client.predict([], 0, api_name="/analyze_batch")


def test_page_and_api_info(served):
    client, app, pipe, demo = served
    info = client.view_api(print_info=False, return_format="dict")
    endpoints = info["named_endpoints"]
    assert set(endpoints) == {"/analyze", "/analyze_batch"}  # the page's own events are private
    names = [p["parameter_name"] for p in endpoints["/analyze"]["parameters"]]
    assert names == ["scan", "hospital", "attack", "eps", "steps", "defence", "purify_always", "seed", "frame", "eot",
                     "make_report", "plane"]
    assert len(endpoints["/analyze"]["returns"]) == len(app.AnalyzeOutputs._fields) == 7
    names = [p["parameter_name"] for p in endpoints["/analyze_batch"]["parameters"]]
    assert names[-2:] == ["plane", "slices"]
    import urllib.request

    html = urllib.request.urlopen(client.src, timeout=30).read().decode()
    assert "MedFedPure" in html
    config = json.dumps(demo.get_config_file(), default=str)  # gr.State holds a callback
    lim = demo.app_state.limits
    assert f"each analysis stops after {demo.app_state.time_budget_s:.0f} s" in config  # the budget is stated
    assert f"at most {lim.steps_max} attack steps" in config
    assert f"adaptive attack at most {lim.adaptive_steps_max} steps" in config  # its limits, stated
    for name in demo.app_state.hospital_names.values():  # hospitals named for what they are
        assert name in config


# ------------------------------------------------------------------------------------------------ callbacks
def _req(name: str = "s1"):
    return SimpleNamespace(session_hash=name)


def _upload(demo, src: Path, name: str) -> str:
    """A copy of src where Gradio puts an upload (its temp folder, a folder of its own), as the browser would."""
    folder = Path(demo.GRADIO_CACHE) / f"upload-{name}-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    dst = folder / name
    dst.write_bytes(Path(src).read_bytes())
    return str(dst)


def test_upload_preview_frame_picker_and_deletion(served, tmp_path):
    client, app, pipe, demo = served
    ui = demo.app_state
    req = _req("frames")
    dcm = make_dicom(tmp_path / "multi.dcm", frames=5)
    path = _upload(demo, dcm, f"{SECRET_NAME}.dcm")
    preview, info, slider, plane, box, *results = ui.inspect(path, req)
    assert not Path(path).exists() and not Path(path).parent.exists(), "the upload was not deleted once read"
    assert box["value"] is None  # the upload box is emptied: its file name leaves the page
    assert results[0].startswith("### Scan loaded") and results[1] == "" and results[4] is None  # results cleared
    assert results[6] == "" and plane["visible"] is False
    assert "data:image/png;base64," in preview
    assert slider["visible"] is True and slider["minimum"] == 1 and slider["maximum"] == 5
    assert slider["value"] == 3  # the reader's default, the middle frame, counted from 1
    assert "DICOM" in info and "frame 3 of 5" in info and "MR" in info and "window" in info and "scan-" in info
    assert_no_secret(info + preview)
    preview5, info5 = ui.preview_frame(5, req)  # from memory: the file is gone
    assert "frame 5 of 5" in info5 and preview5 != preview
    out = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 5, 1, False, request=req)
    assert out[4]["scan"]["frame"] == 5
    assert ui.preview_frame(7, req)[1].startswith("**Cannot show this frame:** Frame 7 does not exist: the file has "
                                                  "5 frames (1 to 5)")
    _, info1, slider1, _, *_ = ui.inspect(str(EXAMPLES / "no35.jpg"), req)
    assert slider1["visible"] is False and "JPEG" in info1
    assert (EXAMPLES / "no35.jpg").is_file()  # a file outside Gradio's temp folder is never deleted
    bad = _upload(demo, tmp_path / "multi.dcm", f"{SECRET_NAME}_bad.dcm")
    Path(bad).write_bytes(b"\x00" * 128 + b"DICM" + b"\x01" * 10)
    with pytest.warns(UserWarning, match=r"Cannot read this file"):  # gr.Warning outside a request: warnings.warn
        none, message, hidden, *_ = ui.inspect(bad, req)
    assert none is None and "Cannot read" in message and hidden["visible"] is False
    assert_no_secret(message)
    assert not Path(bad).exists()
    # the failed upload replaced the last scan: Analyze says so instead of showing the old scan's answer
    out = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, False, request=req)
    assert out[0].startswith("### Cannot analyze") and "No scan is loaded" in out[0]
    assert out[1:] == ("", out[2], "", None, out[5], "") and out[2]["visible"] is False
    assert out[5] == {"__type__": "update", "value": None, "visible": False}  # the empty report box is hidden


def test_report_folders_deleted_at_session_end_and_after_the_keep_time(served):
    client, app, pipe, demo = served
    ui = demo.app_state
    req = _req("reports")
    ui.inspect(str(EXAMPLES / "y1349.jpg"), req)
    out = ui.analyze_ui(0, "none", 0.03, 1, True, True, 0, 0, 1, True, request=req)
    assert out[5]["visible"] is True
    files = [Path(p) for p in out[5]["value"]] + [Path(p) for p in out[2]["value"]]
    assert all(p.is_file() for p in files)
    folder = files[0].parent.parent
    assert folder.parent == ui.sessions.workdir
    ui.end_session(req)  # what Gradio's unload event calls when the page is closed
    assert not folder.exists() and ui.sessions.peek("reports") is None
    # bounded time: the sweeper removes folders and idle sessions older than keep_s
    ui.inspect(str(EXAMPLES / "y1349.jpg"), req)
    out = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, True, request=req)
    report = Path(out[5]["value"][0])
    assert ui.sessions.sweep() == 0 and report.is_file()  # young: kept
    assert ui.sessions.sweep(now=time.time() + ui.sessions.keep_s + 5) >= 1  # old: the session and its folders
    assert not report.exists() and ui.sessions.peek("reports") is None
    assert ui.sessions._sweeper is not None and ui.sessions._sweeper.is_alive()


class _Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None):
        self.calls.append((value, desc))


def test_per_step_progress_for_attack_and_purification(served):
    client, app, pipe, demo = served
    ui = demo.app_state
    req = _req("progress")
    ui.inspect(str(EXAMPLES / "y1493.jpg"), req)
    progress = _Progress()
    out = ui.analyze_ui(0, "pgd", 0.03, 5, True, True, 0, 0, 1, False, request=req, progress=progress)
    assert out[0].startswith("### Answer") or out[0].startswith("### No diagnosis")
    steps = [v for v, d in progress.calls if d and d.startswith("PGD attack") and v is not None]
    assert steps == [(k, 5) for k in range(6)]  # stage start, then each of the 5 steps
    ddim = pipe.ddim_steps
    pur = [v for v, d in progress.calls if d and "purification step" in d and v is not None]
    assert pur == [(k, ddim) for k in range(ddim + 1)]


def test_time_budget_stops_a_long_attack(served):
    client, app, pipe, demo = served
    ui = app.DemoApp(pipe, time_budget_s=2)
    req = _req("budget")
    ui.inspect(str(EXAMPLES / "y1493.jpg"), req)
    t = time.perf_counter()
    out = ui.analyze_ui(0, "adaptive", 0.03, 8, True, False, 0, 0, 1, True, request=req)
    assert time.perf_counter() - t < 30
    assert out[0].startswith("### Stopped") and "time budget of 2 s per analysis ran out during" in out[0]
    assert out[1:] == ("", out[2], "", None, out[5], "")  # nothing of the unfinished analysis is shown
    assert out[5]["value"] is None and out[2]["value"] is None
    import gradio as gr

    with pytest.raises(gr.Error, match="time budget"):
        ui.analyze(str(EXAMPLES / "y1493.jpg"), 0, "adaptive", 0.03, 8, True, False, 0, 0, 1, False, request=req)
    ui.sessions.close()


def test_stop_ends_a_running_request(served):
    client, app, pipe, demo = served
    ui = demo.app_state
    req = _req("stop")
    ui.inspect(str(EXAMPLES / "y1493.jpg"), req)
    started = threading.Event()

    class Progress(_Progress):
        def __call__(self, value, desc=None):
            super().__call__(value, desc)
            if desc and "attack" in desc and value and value[0] >= 1:
                started.set()

    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=ui.analyze_ui(0, "adaptive", 0.03, 8, True, False, 0, 0, 1, True, request=req, progress=Progress())))
    worker.start()
    assert started.wait(120), "the attack never reported a step"
    t = time.perf_counter()
    assert ui.stop(req) == {"__type__": "update"}  # the running request answers "Stopped" itself
    worker.join(60)
    assert not worker.is_alive() and time.perf_counter() - t < 20
    assert result["out"][0].startswith("### Stopped") and "your request" in result["out"][0]
    assert ui.stop(req) == {"__type__": "update"} and not ui.sessions.get("stop").cancels  # nothing left running
    # a request made before the last Stop (still queued when it was pressed) ends at once when its turn comes
    ticket = ui.begin(req)[-1]
    assert ui.stop(req).startswith("### Stopped\nYou stopped the analysis before it started")
    t = time.perf_counter()
    out = ui.analyze_ui(0, "pgd", 0.03, 5, True, False, 0, 0, 1, False, None, ticket, request=req)
    assert out[0].startswith("### Stopped") and time.perf_counter() - t < 5
    # one made after it runs normally
    out = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, False, None, ui.begin(req)[-1], request=req)
    assert out[0].startswith(("### Answer", "### No diagnosis"))


def test_light_work_never_waits_behind_heavy_work():
    """Requests: heavy work (adaptive attacks, batches) and light work have slots of their own; a third heavy
    request waits (and says so) while a light one runs at once; Stop ends a wait."""
    from medfedpure.app_files import Sessions
    from medfedpure.app_progress import Requests

    sessions = Sessions(Path(os.environ.get("GRADIO_TEMP_DIR", "/tmp")) / f"slots-{os.getpid()}", keep_s=60)
    requests = Requests(sessions, 60, user_errors=(ValueError,), slots={"light": 1, "heavy": 2})
    release = threading.Event()
    started = []

    def heavy(session, tracker, t0):
        started.append(threading.current_thread().name)
        release.wait(30)
        return "heavy done"

    workers = [threading.Thread(target=requests.run, args=("heavy", f"h{k}", None, heavy), kwargs={"kind": "heavy"})
               for k in range(2)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 10
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 2 and all(n.startswith("medfedpure-heavy") for n in started)  # its own threads
    t = time.perf_counter()
    assert requests.run("light", "l", None, lambda *a: "light done") == "light done"
    assert time.perf_counter() - t < 1.0  # not behind the two heavy ones
    progress = _Progress()
    third = {}
    waiter = threading.Thread(target=lambda: third.update(out=requests.run(
        "heavy", "h3", progress, heavy, lambda stopped, message: message, kind="heavy")))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and any(d and d.startswith("waiting for a free slot") for _, d in progress.calls)
    requests.stop("h3")
    waiter.join(5)
    assert not waiter.is_alive() and third["out"].startswith("Stopped at your request")
    release.set()
    for w in workers:
        w.join(10)
    requests.close()
    sessions.close()


def test_two_adaptive_analyses_at_the_defaults_and_a_pgd_meanwhile(served):
    """Through the API, as users send them: two adaptive analyses at the page's defaults (steps left out) finish
    inside the time budget, and a PGD analysis sent meanwhile answers within twice its own time."""
    client, app, pipe, demo = served
    budget = demo.app_state.time_budget_s
    scan = handle_file(EXAMPLES / "y1493.jpg")
    pgd = dict(hospital=0, attack="pgd", eps=8 / 255, steps=10, make_report=False, api_name="/analyze")
    client.predict(scan, **pgd)  # warm
    t = time.perf_counter()
    client.predict(scan, **pgd)
    alone = time.perf_counter() - t
    jobs = [client.submit(scan, 0, "adaptive", 8 / 255, make_report=False, api_name="/analyze") for _ in range(2)]
    time.sleep(1.0)  # both started
    t = time.perf_counter()
    client.predict(scan, **pgd)
    meanwhile = time.perf_counter() - t
    outs = [job.result(timeout=budget + 60) for job in jobs]
    for out in outs:
        details = out[4]
        assert details["attack"]["name"] == "adaptive" and details["attack"]["steps"] == demo.app_state.limits.default_steps("adaptive")
        assert details["timings_ms"]["total"] < budget * 1000
    assert meanwhile <= 2 * alone + 0.5, f"PGD took {meanwhile:.1f} s beside two adaptive runs, {alone:.1f} s alone"


class _FakeModel:
    """The real pipeline, with the out-of-distribution verdict and tumour type the new model adds."""

    def __init__(self, pipe, in_distribution, tumour_type="meningioma"):
        self._pipe, self._ind, self._type = pipe, in_distribution, tumour_type
        self.tumour_types = ["glioma", "meningioma", "pituitary"]

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def analyze(self, *args, **kwargs):
        result = self._pipe.analyze(*args, **kwargs)
        probs = {"glioma": 0.2, "meningioma": 0.7, "pituitary": 0.1}
        result.scans = [dataclasses.replace(r, in_distribution=self._ind, ood_score=2.5 if not self._ind else 0.5,
                                            ood_threshold=1.0, tumour_type=self._type,
                                            tumour_type_probabilities=probs) for r in result.scans]
        return result


def test_out_of_distribution_scan_gets_no_diagnosis(served):
    client, app, pipe, demo = served
    ui = app.DemoApp(_FakeModel(pipe, in_distribution=False))
    req = _req("ood")
    ui.inspect(str(EXAMPLES / "y1431.jpg"), req)
    verdict, panels, _, _, details, _, bars = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, False,
                                                            request=req)
    assert verdict.startswith("### No diagnosis: this does not look like a brain MRI slice the model knows")
    assert "score 2.5 > threshold 1" in verdict and "Answer:" not in verdict and "Tumour type" not in verdict
    assert "Not meaningful" in bars and "mfp-muted" in bars and "Tumour type" not in bars
    assert details["diagnosis_shown"] is False and details["result"]["in_distribution"] is False
    ui.sessions.get("ood").batch = [(1, ui.sessions.get("ood").scan, None)]
    rows = ui.analyze_batch_ui(0, "none", 0.0, 1, True, False, 0, request=req).table
    row = rows.iloc[0].to_dict()
    assert "no diagnosis" in row["status"] and row["answer"] == "" and row["like training scans"] == "no"
    ui.sessions.close()


def test_tumour_type_is_shown_beside_a_tumour_decision(served):
    client, app, pipe, demo = served
    ui = app.DemoApp(_FakeModel(pipe, in_distribution=True))
    req = _req("type")
    ui.inspect(str(EXAMPLES / "y1431.jpg"), req)
    verdict, panels, _, _, details, _, bars = ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, False,
                                                            request=req)
    final = details["result"]["final_prediction"]
    assert "looks like the brain MRI slices the model was trained on" in verdict
    if app.render.is_tumour(final):
        assert "Tumour type: most like **meningioma** (70%; glioma 20%, pituitary 10%)" in verdict
        assert "Tumour type (the answer is tumour)" in bars
    else:  # the type is not mentioned beside a no-tumour answer
        assert "Tumour type" not in verdict and "Tumour type" not in bars
    ui.sessions.close()


# ------------------------------------------------------------------------------------------------ pure helpers
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
    assert tuple(img[0, 0]) == tuple(r.lut("RdBu_r")[255]) and tuple(img[1, 1]) == tuple(r.lut("RdBu_r")[128])
    assert r.error_overlay(a, np.abs(b)).shape == (8, 8, 3)
    assert r.scan_id(a) == r.scan_id(a.copy()) != r.scan_id(b)
    assert r.jsonable({"x": float("inf"), "y": np.float32(1.5)}) == {"x": "inf", "y": 1.5}
    svg = r.score_svg(q, 0.18, 0.25, 0.12)
    assert svg.count("<line") > 5 and "threshold 0.18" in svg and "this scan 0.25" in svg
    html = r.panels_html([r.Panel("A", a), r.Panel("B <x>", None, "why & how")])
    assert "data:image/png;base64," in html and "B &lt;x&gt;" in html and "why &amp; how" in html
    assert r.is_tumour("tumour") and r.is_tumour("glioma") and not r.is_tumour("no_tumour")
    assert "0 ms" not in r.timings_markdown({"read": 1.2}, "cpu") and "read 1 ms" in r.timings_markdown(
        {"read": 1.2}, "cpu")


def test_colour_maps_match_matplotlib():
    from matplotlib import colormaps

    from medfedpure import app_render as r

    for name in ("inferno", "RdBu_r"):
        ref = np.rint(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
        assert np.array_equal(r.lut(name), ref)


def _fold(text: str) -> tuple[str, str]:
    """A verdict -> (the plain words before the details fold, the fold)."""
    head, _, fold = text.partition("<details>")
    assert fold.startswith("<summary>") and fold.rstrip().endswith("</details>"), text
    return head, fold


def test_verdict_wording_for_the_new_fields():
    from medfedpure import app_render as r

    base = dict(score=0.2, threshold=0.1, flagged=True, t_star=30, purified=np.zeros((2, 2)), prediction="tumour",
                purified_prediction="no_tumour", final_prediction="no_tumour", final_probabilities=[0.8, 0.2],
                tumour_type="glioma", tumour_type_probabilities={"glioma": 0.6, "meningioma": 0.3, "pituitary": 0.1},
                in_distribution=True, ood_score=0.1, ood_threshold=0.5)
    text = r.verdict(SimpleNamespace(**base), quantiles=list(np.linspace(0, 0.15, 21)),
                     statistic="background_highpass", target_fpr=0.05)
    head, fold = _fold(text)
    assert head.startswith("### Answer: no tumour (80%, fairly sure)")
    assert "Tumour type" not in head  # only beside a tumour answer
    assert "looked attacked" in head and "changed the answer from tumour to no tumour" in head
    assert "No attack was run, so the flag is a false alarm" in head
    # the statistics sit in the fold, in words, numbers rounded; no internal names
    assert "Flagged as suspicious" in fold and "about 5% of clean" in fold and "t* = 30" in fold
    assert "background" in fold and "background_highpass" not in text and "background highpass" not in text
    assert "score 0.2 > threshold 0.1" in fold
    tumour = SimpleNamespace(**{**base, "final_prediction": "tumour", "purified_prediction": "tumour"})
    assert "most like **glioma** (60%; meningioma 30%, pituitary 10%)" in r.verdict(tumour)
    unknown = SimpleNamespace(**{**base, "tumour_type": None, "in_distribution": None, "final_prediction": "tumour"})
    text = r.verdict(unknown, background_fraction=0.0, statistic="background_highpass")
    assert "not estimated by this model" in text and "not available in this model" in text
    assert "cannot judge it" in text
    ood = SimpleNamespace(**{**base, "in_distribution": False, "ood_score": 3.0, "ood_threshold": 1.0})
    text = r.verdict(ood)
    assert "No diagnosis" in text and "Answer:" not in text and "score 3 > threshold 1" in text
    colour = SimpleNamespace(**{**base, "in_distribution": False, "ood_score": 0.4, "ood_reason": "colour"})
    text = r.verdict(colour)
    assert "### No diagnosis: this is a colour picture" in text and "Answer:" not in text
    assert "more than 20% of this file's pixels are in colour" in text
    assert r.batch_row(1, colour)["status"].startswith("colour picture") and r.batch_row(1, colour)["answer"] == ""
    off = r.verdict(SimpleNamespace(**{**base, "purified": None, "t_star": 0}), defence=False)
    assert "defence off" in off and "The defence is off" in off
    row = r.batch_row(4, ood, scan="scan-1")
    assert row["status"].startswith("not a brain MRI") and row["answer"] == "" and row["row"] == 4
    assert r.batch_row(2, tumour)["tumour type"] == "glioma" and r.batch_row(2, SimpleNamespace(**base))[
        "tumour type"] == ""
    assert r.batch_row(2, tumour)["flagged"] == "yes" and r.batch_row(2, tumour)["sure"] == "80%"


def test_no_diagnosis_verdict_gives_no_answer_at_all():
    """'No diagnosis' ends without the classifier's answer, in bold or otherwise, with or without the defence."""
    from medfedpure import app_render as r

    for ind, blank in ((False, False), (True, True), (False, True)):
        for defence, purified in ((True, np.zeros((2, 2))), (False, None)):
            res = SimpleNamespace(score=0.5, threshold=0.1, flagged=True, t_star=30 if purified is not None else 0,
                                  purified=purified, prediction="tumour", purified_prediction="tumour",
                                  final_prediction="tumour", final_probabilities=[0.1, 0.9], tumour_type=None,
                                  in_distribution=ind, ood_score=2.0, ood_threshold=1.0)
            text = r.verdict(res, defence=defence, attack="pgd", eps=8 / 255, clean_prediction="no_tumour",
                             blank=blank)
            head, fold = _fold(text)
            assert head.startswith("### No diagnosis"), head
            assert "tumour" not in head.replace("brain MRI", "") and "**" not in head, head
            assert "Answer" not in text and "answer is" not in text and "**tumour**" not in text


def test_attacked_verdict_compares_with_the_clean_answer():
    """After an attack the plain words say whether the answer is still the clean scan's: restored, failed, or
    never changed; numbers are rounded."""
    from medfedpure import app_render as r

    def res(before, final, flagged=True, purified=True):
        return SimpleNamespace(score=9.8765, threshold=3.7612, flagged=flagged, t_star=160 if purified else 0,
                               purified=np.zeros((2, 2)) if purified else None, prediction=before,
                               purified_prediction=final if purified else None, final_prediction=final,
                               final_probabilities=[0.9364, 0.0636], tumour_type=None, in_distribution=True,
                               ood_score=0.5, ood_threshold=1.0)

    failed = r.verdict(res("no_tumour", "no_tumour"), attack="pgd", eps=8 / 255, clean_prediction="tumour")
    head, fold = _fold(failed)
    assert head.startswith("### Answer: no tumour (94%, fairly sure) \u00b7 the defence failed"), head
    assert "The PGD attack (strength 8/255) changed the classifier's answer from tumour to no tumour" in head
    assert "**The defence failed: the clean scan's answer was tumour, the answer shown is no tumour.**" in head
    assert "9.88 > threshold 3.76" in fold and "9.8765" not in failed
    restored = r.verdict(res("no_tumour", "tumour"), attack="fgsm", eps=0.02, clean_prediction="tumour")
    assert "the defence restored it" in restored.splitlines()[0]
    assert "**The defence restored the clean scan's answer (tumour).**" in restored
    missed = r.verdict(res("no_tumour", "no_tumour", flagged=False, purified=False), attack="adaptive",
                       eps=8 / 255, clean_prediction="tumour")
    assert "did not look attacked" in missed and "The defence failed" in missed
    same = r.verdict(res("tumour", "tumour", flagged=False, purified=False), attack="pgd", eps=8 / 255,
                     clean_prediction="tumour")
    assert "did not change the classifier's answer" in same and "The answer is the clean scan's (tumour)" in same
    off = r.verdict(res("no_tumour", "no_tumour", purified=False), defence=False, attack="pgd", eps=8 / 255,
                    clean_prediction="tumour")
    assert "the attack won" in off.splitlines()[0] and "not the clean scan's answer (tumour)" in off


def test_page_words_are_plain_and_rounded():
    from medfedpure import app_render as r

    meta = {"format": "DICOM", "width": 256, "height": 256, "frames": 25, "frame": 24, "modality": "MR",
            "pixel_spacing": [0.666666686534882, 0.699987828731537], "bits_stored": 12,
            "window": {"center": 1600.0, "width": 3200.0, "source": "DICOM"}, "size": 128}
    text = r.meta_markdown(meta, "scan-1")
    assert "frame 25 of 25" in text and "0.67 x 0.7 mm" in text and "0.6666" not in text
    assert r.clean_meta(meta)["frame"] == 25 and r.clean_meta(meta)["frames"] == 25  # from 1, as on the page
    assert r._pct(0.9364) == "94%" and r._pct(0.9999) == ">99%" and r._pct(0.0001) == "<1%" and r._pct(1.0) == "100%"
    assert "simulated" in r.model_header("x", "cpu", {0: "simulated hospital 1", 8: "TCGA site DU"})
    assert "background_highpass" not in r.statistic_phrase("background_highpass")


def test_report_picture_header_names_the_frame_and_the_hospital():
    from medfedpure import app_render as r
    from medfedpure.attack_workflow import AttackSpec

    img = np.random.default_rng(1).random((128, 128)).astype(np.float32)
    res = SimpleNamespace(input=img, score=0.5, threshold=0.4, flagged=True, t_star=40, purified=img,
                          probabilities=[0.3, 0.7], final_probabilities=[0.4, 0.6], prediction="tumour",
                          purified_prediction="tumour", final_prediction="tumour", tumour_type=None,
                          in_distribution=True, reconstruction=img, error_map=img)
    for meta, place in (({"frames": 5, "frame": 2}, "frame 3 of 5"),
                        ({"frames": 90, "frame": 44, "plane": "sagittal"}, "sagittal slice 45 of 90")):
        view = r.AnalysisView(image=img, meta=meta, result=res, clean=None, attack=AttackSpec("pgd", 8 / 255, 10),
                              hospital=8, defence=True, purify="flagged", class_names=("no_tumour", "tumour"),
                              quantiles=tuple(np.linspace(0, 1, 21)), hospital_name="TCGA site DU")
        info = r.report_info(view, {"verdict": "Answer: tumour"})
        assert info["header"].startswith(f"TCGA site DU | {place} | attack: PGD (8.0/255)"), info["header"]
        panels = r.analysis_panels(view)
        assert panels[0].title == f"Original ({place})"
        assert (panels[0].sides is not None) == ("plane" in meta)
        picture = r.report_image(panels, info)
        assert picture.shape[1] == 1100


def test_user_message_names_no_file_and_gives_no_install_advice():
    from medfedpure import app_render as r
    from medfedpure.io import ScanReadError

    msg = r.user_message(ScanReadError("scan: the image is compressed with JPEG-LS Lossless Image Compression and no "
                                       "decoder for it is installed. Install one of: gdcm; pylibjpeg."))
    assert msg.startswith("The image is compressed with JPEG-LS") and "cannot decode" in msg
    assert "gdcm" not in msg and "pylibjpeg" not in msg and "Install" not in msg and "scan:" not in msg


def test_report_picture_is_fast_and_complete():
    from medfedpure import app_render as r

    img = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    panels = [r.Panel("Original", img), r.Panel("Analyzed scan", None, "No attack: the original itself is analyzed."),
              r.Panel("Perturbation", None, "No attack"), r.Panel("MAE reconstruction", img),
              r.Panel("Detector map", r.error_overlay(img, img)), r.Panel("Purified", None, "Not purified")]
    info = {"name": "scan-abc", "verdict": "Answer: tumour\n\n" + "words " * 120, "header": "hospital 0",
            "probabilities": {"tumour": 0.6, "no_tumour": 0.4},
            "final_probabilities": {"tumour": 0.6, "no_tumour": 0.4},
            "score": 0.1, "threshold": 0.2, "quantiles": list(np.linspace(0, 0.3, 21)), "timings_ms": {"a": 1.0},
            "device": "cpu"}
    r.report_image(panels, info)  # fonts loaded once
    t = time.perf_counter()
    picture = r.report_image(panels, info)
    assert time.perf_counter() - t < 1.0  # ~30 ms on an idle 2-core CPU; loose for a busy machine
    assert picture.shape[1] == 1100 and picture.std() > 10
    # the verdict is drawn above the footer, not under it: the last rows are the footer on white
    assert (picture[-8:] == 255).all()


def test_limits_follow_the_hardware():
    app = import_app()
    cpu, gpu = app.Limits.for_device("cpu"), app.Limits.for_device("cuda:0")
    assert gpu.device == "GPU" and cpu.device == "CPU"
    assert cpu.steps_max < gpu.steps_max and cpu.eot_max < gpu.eot_max and cpu.adaptive_steps_max <= cpu.steps_max
    assert "stops after 60 s" in cpu.text(60) and "no time limit" in cpu.text(0)


def test_model_summary_reads_the_card_and_survives_its_absence(tmp_path):
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
    assert "Tumour type:** not estimated" in summary
    empty = SimpleNamespace(source=SimpleNamespace(path=tmp_path / "nothing"), source_description="somewhere",
                            class_names=["a", "b"], hospitals=[0])
    summary, card = app.model_summary(empty)
    assert "somewhere" in summary and "no model card" in card


def test_adaptive_attack_through_the_whole_defence(served):
    client, app, pipe, demo = served
    out = client.predict(handle_file(EXAMPLES / "y1493.jpg"), 0, "adaptive", 0.02, 1, True, False, 0, 0, 1,
                         False, api_name="/analyze")
    details = check_analysis(out, pipe)
    assert details["attack"]["name"] == "adaptive" and details["attack"]["eot"] == 1
    assert "whole defence" in details["attack"]["threat_model"]
    assert 0 < details["perturbation"]["linf"] <= 0.02 + 1e-6


def test_page_is_served_before_the_models_load(served):
    """python app.py builds the page from the checkpoint's JSON files and loads the models after serving it; a
    request that needs them meanwhile waits, then is answered normally."""
    from medfedpure.app_boot import LazyPipeline

    client, app, pipe, demo = served
    release = threading.Event()

    def loader(model, revision):
        release.wait(60)
        return pipe

    lazy = LazyPipeline(str(pipe.source.path), loader=loader)
    assert lazy.hospitals == list(pipe.hospitals) and lazy.class_names == list(pipe.class_names)
    assert lazy.tumour_types == list(pipe.tumour_types)  # read from sectioned and flat configs alike
    assert not lazy.loaded and lazy.device in ("cpu", "cuda", "mps")
    ui = app.DemoApp(lazy)
    assert "loading the models" in ui.header_text()
    req = _req("lazy")
    ui.inspect(str(EXAMPLES / "no35.jpg"), req)  # reading a scan needs no model
    progress = _Progress()
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=ui.analyze_ui(0, "none", 0.03, 1, True, False, 0, 0, 1, False, request=req, progress=progress)))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive()  # waiting for the models
    loading = threading.Thread(target=lazy.load)
    loading.start()
    release.set()
    worker.join(120)
    loading.join(60)
    assert result["out"][0].startswith("### Answer") and lazy.loaded
    assert any(d and "waiting for the models" in d for _, d in progress.calls)
    assert "loading the models" not in ui.header_text() and ui.page_info()[0] == ui.header_text()
    ui.sessions.close()
