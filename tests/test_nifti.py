"""NIfTI volumes (`.nii`, `.nii.gz`) through the one reader and the command line.

Real volumes: `../shared/data/ixi_t1_healthy/volumes/*.nii.gz` (IXI T1, stored PSR) when present; volumes that
nibabel writes in other orientations (the same voxels, another storage order and affine) must give the very same
slice, and the sides must land where the radiological convention puts them (the subject's right on the image's
left, anterior / superior at the top). A broken file is one line; the header's free text never comes out.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from medfedpure.cli import main  # noqa: E402
from medfedpure.io import ScanReadError, read_scan  # noqa: E402
from medfedpure.nifti import SIDE_LABELS, read_volume, slice_image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
IXI = REPO_ROOT.parent / "shared" / "data" / "ixi_t1_healthy" / "volumes"
IXI_FILES = sorted(IXI.glob("*.nii.gz"))[:3] if IXI.is_dir() else []
ORIENTATIONS = [("L", "P", "S"), ("R", "A", "S"), ("P", "S", "R"), ("A", "I", "L"), ("S", "R", "P")]


def blob_volume(codes=("R", "A", "S")) -> "nib.Nifti1Image":
    """A head-like ellipsoid with one bright blob in the subject's right, anterior, superior part, stored in the
    orientation `codes` (the voxels are the same; the affine says where they are)."""
    x, y, z = np.mgrid[:40, :48, :36].astype(np.float32)  # RAS voxel grid, 2 x 2 x 3 mm
    head = ((x - 20) / 17) ** 2 + ((y - 24) / 21) ** 2 + ((z - 18) / 15) ** 2 < 1
    blob = ((x - 29) ** 2 + (y - 33) ** 2 + (z - 25) ** 2) < 16  # x > centre: right; y: anterior; z: superior
    data = (head * 300.0 + blob * 700.0).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    return reorient(img, codes)


def reorient(img, codes) -> "nib.Nifti1Image":
    """The same image stored in another voxel order (nibabel rewrites the data and the affine)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))


def gz_bytes(img) -> bytes:
    return gzip.compress(img.to_bytes(), compresslevel=1)


def volume_bytes() -> bytes:
    """A real IXI volume when the shared data is there, else the synthetic head."""
    return IXI_FILES[0].read_bytes() if IXI_FILES else gz_bytes(blob_volume(("P", "S", "R")))


# ------------------------------------------------------------------------------------------------ the reader
@pytest.mark.parametrize("path", IXI_FILES, ids=lambda p: p.name[:6])
def test_real_ixi_volumes_in_every_plane(path):
    img = nib.load(str(path))
    canonical = nib.as_closest_canonical(img).shape
    for plane, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        sc = read_scan(path, plane=plane)
        meta = sc.meta
        assert meta["format"] == "NIfTI" and meta["plane"] == plane and meta["modality"] == "MR"
        assert meta["frames"] == canonical[axis] and 0 <= meta["frame"] < meta["frames"]
        assert meta["volumes"] == 1 and meta["window"]["source"].startswith("the volume's")
        assert sc.image.shape == (128, 128) and sc.image.dtype == np.float32
        assert sc.image.std() > 0.1 and 0 <= sc.image.min() and sc.image.max() <= 1
        # the default is the middle of the head: its slice shows more head than the slices a third away
        head = (sc.image > 0.1).mean()
        for other in (meta["frame"] // 3, meta["frame"] + (meta["frames"] - meta["frame"]) * 2 // 3):
            assert head >= (read_scan(path, plane=plane, slice_index=other).image > 0.1).mean() - 0.02
    assert read_scan(path, plane="sagittal", slice_index=0).meta["frame"] == 0


@pytest.mark.parametrize("codes", ORIENTATIONS, ids="".join)
def test_other_orientations_give_the_same_slice(codes):
    """nibabel writes the volume in another orientation: after the reader's reorientation every plane's slice is
    the same picture, pixel for pixel, and so is the default slice."""
    reference = gz_bytes(blob_volume())
    data = gz_bytes(blob_volume(codes))
    assert nib.aff2axcodes(nib.Nifti1Image.from_bytes(gzip.decompress(data)).affine) == codes
    for plane, index in (("axial", 25), ("coronal", 33), ("sagittal", 29)):
        a = read_scan(reference, plane=plane, slice_index=index, size=None)
        b = read_scan(data, plane=plane, slice_index=index, size=None)
        assert a.image.shape == b.image.shape
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)
        assert read_scan(data, plane=plane).meta["frame"] == read_scan(reference, plane=plane).meta["frame"]


@pytest.mark.skipif(not IXI_FILES, reason="the IXI volumes are not in ../shared/data")
@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "I", "A")], ids="".join)
def test_a_real_volume_reoriented_gives_the_same_slice(codes):
    img = nib.load(str(IXI_FILES[0]))
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    again = gz_bytes(reorient(img, codes))
    for plane in ("axial", "coronal", "sagittal"):
        a, b = read_scan(IXI_FILES[0], plane=plane), read_scan(again, plane=plane)
        assert a.meta["frame"] == b.meta["frame"]
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)


def test_sides_follow_the_radiological_convention():
    """The blob sits in the subject's right, front, top: on the axial and coronal slices it appears on the
    image's left (R), at the top of the axial one (A) and of the coronal one (S); on the sagittal slice at the
    left (A) and the top (S). SIDE_LABELS names the edges so."""
    vol = read_volume(gz_bytes(blob_volume(("L", "P", "I"))))
    for plane, index in (("axial", 25), ("coronal", 33), ("sagittal", 29)):
        img = slice_image(vol, plane, index)
        rows, cols = np.nonzero(img > 0.8)
        assert rows.size, plane
        h, w = img.shape
        left, top = cols.mean() < w / 2, rows.mean() < h / 2
        assert left and top, (plane, cols.mean(), rows.mean(), img.shape)
    assert SIDE_LABELS["axial"] == ("R", "L", "A", "P") and SIDE_LABELS["coronal"] == ("R", "L", "S", "I")
    assert SIDE_LABELS["sagittal"] == ("A", "P", "S", "I")


def test_square_pixels_and_one_window_per_volume():
    vol = read_volume(gz_bytes(blob_volume()))  # 2 x 2 x 3 mm voxels
    assert slice_image(vol, "axial", 18).shape == (48, 40)
    assert slice_image(vol, "coronal", 24).shape == (54, 40)  # 36 slices of 3 mm = 54 rows of 2 mm
    a = read_scan(gz_bytes(blob_volume()), plane="axial", slice_index=25)
    b = read_scan(gz_bytes(blob_volume()), plane="axial", slice_index=5)
    assert a.meta["window"] == b.meta["window"]  # the volume's percentiles, not the slice's


def test_four_d_uses_the_first_volume_and_says_so():
    base = blob_volume()
    data = np.stack([base.get_fdata(), base.get_fdata() * 0 + 5, base.get_fdata()[::-1]], axis=-1)
    four = nib.Nifti1Image(data.astype(np.float32), base.affine)
    sc = read_scan(gz_bytes(four), plane="coronal", slice_index=30)
    assert sc.meta["volumes"] == 3
    np.testing.assert_allclose(sc.image, read_scan(gz_bytes(base), plane="coronal", slice_index=30).image,
                               atol=1e-6)


def test_uncompressed_nii_and_nifti2():
    img = blob_volume()
    assert read_scan(img.to_bytes(), plane="axial").meta["format"] == "NIfTI"
    two = nib.Nifti2Image(img.get_fdata().astype(np.float32), img.affine)
    np.testing.assert_allclose(read_scan(two.to_bytes(), plane="axial", slice_index=20).image,
                               read_scan(img.to_bytes(), plane="axial", slice_index=20).image, atol=1e-6)


def test_broken_volumes_are_one_line_errors(tmp_path):
    good = volume_bytes()
    cases = {"truncated.nii.gz": good[: len(good) // 3], "header-only.nii.gz": good[:400],
             "garbage-in-gzip.nii.gz": gzip.compress(good[:348] + b"\x00" * 10)}
    flat = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    cases["flat.nii"] = flat.to_bytes()
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ScanReadError) as err:
            read_scan(path)
        text = str(err.value)
        assert "\n" not in text and text.startswith(f"{name}: ") and "NIfTI" in text, text
    with pytest.raises(ScanReadError, match=r"slice 999 does not exist in the sagittal plane \(slices 1 to \d+\)"):
        read_scan(good, plane="sagittal", slice_index=998)
    with pytest.raises(ScanReadError, match=r"unknown plane 'oblique'"):
        read_scan(good, plane="oblique")


def test_header_free_text_never_comes_out():
    img = blob_volume()
    img.header["descrip"] = b"Doe^Jane MRN-123456"
    img.header["aux_file"] = b"SECRET-ID"
    img.header["intent_name"] = b"Jane"
    sc = read_scan(gz_bytes(img), name="scan")
    text = json.dumps(sc.meta) + repr(sc)
    for secret in ("Doe", "Jane", "MRN", "SECRET"):
        assert secret not in text


# ------------------------------------------------------------------------------------------------ the CLI
def run_cli(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_scan_command_plane_and_slice_from_one(capsys, tmp_path):
    path = tmp_path / "head.nii.gz"
    path.write_bytes(volume_bytes())
    code, out, _ = run_cli(capsys, "scan", path, "--plane", "sagittal", "--slice", 3, "--json")
    record = json.loads(out)
    assert code == 0 and record["plane"] == "sagittal" and record["slice"] == 3 and record["frame"] == 3  # from 1
    code, out, _ = run_cli(capsys, "scan", path, "--plane", "coronal")
    assert code == 0 and "NIfTI" in out and "coronal slice" in out and "R left, L right, S top, I bottom" in out
    code, out, err = run_cli(capsys, "scan", path, "--plane", "sagittal", "--slice", 9999)
    assert code == 2 and "slice 9999 does not exist in the sagittal plane" in err and len(err.splitlines()) == 1


def test_cli_corrupt_volume_exit_2_one_line(tmp_path):
    """In a fresh process, as a user runs it: `scan` and `analyze` on a broken .nii.gz print one line, exit 2."""
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(volume_bytes()[:2000])
    for command in ("scan", "analyze"):
        proc = subprocess.run([sys.executable, "-m", "medfedpure", command, str(bad), "--plane", "sagittal",
                               "--slice", "3", "--json"], capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=600)
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout
        record = json.loads(proc.stdout)
        assert record["ok"] is False and "truncated or damaged" in record["error"] and "\n" not in record["error"]


@pytest.mark.skipif(not (REPO_ROOT / "pretrained" / "classifier" / "model.safetensors").is_file(),
                    reason="the bundled checkpoints are not there")
def test_analyze_command_on_a_sagittal_slice(tmp_path):
    path = tmp_path / "head.nii.gz"
    path.write_bytes(volume_bytes())
    n = read_scan(path, plane="sagittal").meta["frames"]
    proc = subprocess.run([sys.executable, "-m", "medfedpure", "analyze", "--json", str(path), "--plane", "sagittal",
                           "--slice", str(n // 2)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout)
    assert row["ok"] and row["format"] == "NIfTI" and row["plane"] == "sagittal" and row["slice"] == n // 2
    assert row["final_prediction"] in ("tumour", "no_tumour") and row["slices"] == n
