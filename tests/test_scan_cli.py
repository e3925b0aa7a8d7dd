"""`python -m medfedpure scan`: JSON lines, readable lines, exit codes, saved previews, no tracebacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
from PIL import Image

from medfedpure.cli import main

REQUIRED = {"file", "ok", "error", "width", "height", "modality", "frames"}


def run(capsys, *argv):
    code = main(["scan", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_json_lines_for_examples_folder(capsys, examples_dir):
    code, out, _ = run(capsys, examples_dir, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == 9  # SOURCE.md beside the scans is skipped
    for record in records:
        assert REQUIRED <= set(record) and record["ok"] and record["error"] is None
        assert record["size"] == 128 and record["modality"] is None and record["frames"] == 1
    assert [r["name"] for r in records] == sorted(r["name"] for r in records)
    assert {r["name"]: r["format"] for r in records}["y1349.jpg"] == "PNG"


def test_bad_file_gives_exit_2_and_others_still_reported(capsys, tmp_path, examples_dir):
    bad = tmp_path / "notes.png"
    bad.write_text("not a scan")
    code, out, err = run(capsys, examples_dir / "no35.jpg", bad, tmp_path / "missing.dcm",
                         examples_dir / "y1493.jpg", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and [r["ok"] for r in records] == [True, False, False, True]
    assert records[1]["error"].startswith("notes.png: this is not an image")
    assert records[2]["error"] == "missing.dcm: file not found."
    assert records[1]["width"] is None and records[3]["width"] == 201

    code, out, err = run(capsys, examples_dir / "no35.jpg", bad)  # readable mode: errors on stderr
    assert code == 2 and out.startswith("no35.jpg: ok, JPEG L, 220x275") and "notes.png" in err


def test_save_dir_writes_pngs_without_collisions(capsys, tmp_path, examples_dir):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(examples_dir / "no35.jpg", other / "no35.jpg")  # same stem, different folder
    out_dir = tmp_path / "previews"
    code, out, _ = run(capsys, examples_dir / "no35.jpg", other / "no35.jpg", examples_dir / "no411.jpg",
                       "--save-dir", out_dir, "--size", 64)
    assert code == 0 and out.count("saved") == 3
    assert sorted(p.name for p in out_dir.iterdir()) == ["no35-1.png", "no35.png", "no411.png"]
    with Image.open(out_dir / "no411.png") as im:
        assert im.mode == "L" and im.size == (64, 64)
        pixels = np.asarray(im)
    assert pixels[0].max() == 0 and pixels[32].max() > 100  # 300 x 168 scan: black padding above


def test_dicom_report_has_no_identifying_data(capsys):
    from pydicom import examples

    path = examples.get_path("mr")
    code, out, _ = run(capsys, path, "--json")
    record = json.loads(out)
    assert code == 0 and record["modality"] == "MR" and record["window"]["source"] == "dicom"
    ds = pydicom.dcmread(path)
    for key in ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "SOPInstanceUID", "InstitutionName"):
        assert str(ds[key].value) not in out, key
    code, out, _ = run(capsys, path)
    assert "modality MR" in out and "window dicom (C 600, W 1600)" in out


def test_frame_option(capsys, tmp_path):
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    code, out, _ = run(capsys, tmp_path / "stack.tif", "--frame", 2, "--json")
    assert code == 0 and json.loads(out)["frame"] == 2  # frames count from 1
    code, out, _ = run(capsys, tmp_path / "stack.tif", "--frame", 7, "--json")
    assert code == 2 and "frame 7 does not exist" in json.loads(out)["error"]
    assert "frames 1 to 2" in json.loads(out)["error"]
