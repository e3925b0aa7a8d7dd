"""medfedpure.io: every raster mode and format Br35H (and users) bring, DICOM via pydicom, and bad input."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEGLSLossless, MRImageStorage, generate_uid

from medfedpure.io import META_KEYS, Scan, ScanReadError, dicom_frame_count, fit_to_square, read_scan, to_uint8

EXAMPLE_FORMATS = {"y1349.jpg": "PNG", "y1431.jpg": "JPEG", "y1493.jpg": "JPEG",
                   "no35.jpg": "JPEG", "no411.jpg": "JPEG", "no427.jpg": "JPEG"}  # fmt: skip


def check_output(scan: Scan, size: int = 128) -> None:
    assert isinstance(scan.image, np.ndarray)
    assert scan.image.dtype == np.float32 and scan.image.shape == (size, size)
    assert np.isfinite(scan.image).all() and 0.0 <= scan.image.min() and scan.image.max() <= 1.0
    assert set(scan.meta) == set(META_KEYS)


# ---------------------------------------------------------------------------------------------------------
# raster images


@pytest.mark.parametrize("name", sorted(EXAMPLE_FORMATS))
def test_shipped_examples(examples_dir, name):
    scan = read_scan(examples_dir / name)
    check_output(scan)
    assert scan.name == name and scan.meta["format"] == EXAMPLE_FORMATS[name]  # y1349.jpg is really a PNG
    assert scan.image.max() > 0.5 and scan.meta["size"] == 128


def gradient(w: int = 48, h: int = 32) -> np.ndarray:
    """Smooth uint8 ramp (JPEG keeps it almost exactly)."""
    x = np.linspace(20, 235, w)[None, :] + np.linspace(0, 15, h)[:, None]
    return np.rint(x).astype(np.uint8)


def make_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A PIL image in `mode` and the gray image in [0, 1] the reader must return for it."""
    g = gradient()
    gray = Image.fromarray(g)
    rgb = Image.merge("RGB", [gray] * 3)
    expected = g / 255.0
    half = np.zeros_like(g)
    half[:, : g.shape[1] // 2] = 255  # opaque left half, transparent right half
    if mode == "L":
        return gray, expected
    if mode == "RGB":
        return rgb, expected
    if mode == "RGBA":
        return Image.merge("RGBA", [gray] * 3 + [Image.fromarray(half)]), expected * (half / 255)
    if mode == "LA":
        return Image.merge("LA", [gray, Image.fromarray(half)]), expected * (half / 255)
    if mode == "P":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        return p, np.asarray(p.convert("L")) / 255.0
    if mode == "I;16":  # 16-bit: scaled by the type's range (65535), so g * 257 maps back to g / 255
        return Image.fromarray((g.astype(np.uint16) * 257)), expected
    if mode == "I":  # 32-bit int holding 16-bit data
        return Image.fromarray(g.astype(np.int32) * 257), expected
    if mode == "1":
        b = Image.fromarray(np.where(g > 127, 255, 0).astype(np.uint8)).convert("1", dither=Image.Dither.NONE)
        return b, np.asarray(b.convert("L")) / 255.0
    if mode == "CMYK":
        return rgb.convert("CMYK"), expected
    if mode == "F":
        return Image.fromarray((g / 255.0).astype(np.float32)), expected
    raise AssertionError(mode)


CASES = [("PNG", m) for m in ("RGB", "RGBA", "L", "P", "I;16", "1", "LA")] + \
        [("JPEG", m) for m in ("RGB", "L", "CMYK")] + \
        [("BMP", m) for m in ("RGB", "L", "P", "1")] + \
        [("TIFF", m) for m in ("RGB", "RGBA", "L", "P", "I;16", "I", "1", "CMYK", "F")] + \
        [("WEBP", m) for m in ("RGB", "RGBA")] + [("GIF", "P")]  # fmt: skip


@pytest.mark.parametrize("fmt,mode", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_raster_modes_and_formats(tmp_path, fmt, mode):
    im, expected = make_image(mode)
    assert im.mode == mode
    path = tmp_path / f"scan.{fmt.lower()}"
    im.save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}))
    native = read_scan(path, size=None)
    assert native.meta["format"] == fmt and native.meta["mode"] == mode
    assert (native.meta["width"], native.meta["height"]) == (48, 32) and native.image.shape == (32, 48)
    assert native.image.dtype == np.float32
    tolerance = 0.02 if fmt == "JPEG" else 0.006  # JPEG is lossy; the rest is exact up to 8-bit rounding
    assert np.abs(native.image - expected).mean() < tolerance
    check_output(read_scan(path))


def test_png_named_jpg_bytes_and_file_objects(tmp_path):
    im, expected = make_image("L")
    path = tmp_path / "fake.jpg"
    im.save(path, format="PNG")  # Br35H holds 14 of these
    assert read_scan(path).meta["format"] == "PNG"
    from_bytes = read_scan(path.read_bytes(), size=None, name="upload.jpg")
    assert from_bytes.name == "upload.jpg" and np.allclose(from_bytes.image, expected, atol=0.003)
    with open(path, "rb") as fh:
        assert read_scan(fh).name == "fake.jpg"
    assert read_scan(io.BytesIO(path.read_bytes())).name == "scan"


def test_color_rgb_uses_luma(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    assert read_scan(path, size=None).image.mean() == pytest.approx(0.299, abs=0.003)


def test_sixteen_bit_is_not_stretched(tmp_path):
    path = tmp_path / "dim16.png"
    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(path)
    assert read_scan(path, size=None).image.max() == pytest.approx(1000 / 65535, rel=1e-4)


def test_float_tiff_outside_unit_range_is_stretched(tmp_path):
    path = tmp_path / "f.tiff"
    Image.fromarray(np.linspace(-5, 5, 32 * 32, dtype=np.float32).reshape(32, 32)).save(path)
    image = read_scan(path, size=None).image
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)


def test_rgba_composited_on_black(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(path)  # white but fully transparent
    assert read_scan(path).image.max() == 0.0


def test_exif_orientation_applied(tmp_path):
    g = np.zeros((32, 64), np.uint8)
    g[:, :32] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(g).save(path, exif=exif, quality=95)
    scan = read_scan(path, size=None)
    assert (scan.meta["width"], scan.meta["height"]) == (32, 64) and scan.image.shape == (64, 32)
    assert scan.image[:28].mean() > 0.9 and scan.image[36:].mean() < 0.1  # white half now on top
    assert read_scan(path).image.shape == (128, 128)


def test_multiframe_tiff(tmp_path):
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 120, 250)]
    path = tmp_path / "stack.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert dicom_frame_count(path) == 3
    first = read_scan(path, size=None)
    assert first.meta["frames"] == 3 and first.meta["frame"] == 0
    assert first.image.mean() == pytest.approx(10 / 255)
    assert read_scan(path, size=None, frame=2).image.mean() == pytest.approx(250 / 255)
    with pytest.raises(ScanReadError, match=r"stack\.tif: frame 4 does not exist.*frames 1 to 3"):
        read_scan(path, frame=3)


def test_aspect_kept_with_black_padding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (200, 100), 255).save(path)
    image = read_scan(path).image  # 200 x 100 -> 128 x 64, centred: rows 32..95
    assert (image[:32] == 0).all() and (image[96:] == 0).all()
    assert image[33:95].min() > 0.99
    tall = fit_to_square(np.ones((100, 50), np.float32), 64)  # 64 x 32 content, columns 16..47
    assert (tall[:, :16] == 0).all() and (tall[:, 48:] == 0).all() and tall[:, 17:47].min() > 0.99


def test_downscale_is_antialiased():
    stripes = np.zeros((256, 256), np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes: aliasing would give 0/1 columns, antialiasing ~0.5 everywhere
    assert np.abs(fit_to_square(stripes, 64) - 0.5).max() < 0.05


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([0.0, 0.2, 1 / 255 * 0.6, 1.0, 1.3, -0.2]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 51, 1, 255, 255, 0]


def test_constant_image_is_accepted(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("L", (32, 32), 77).save(path)
    assert read_scan(path).image.max() == pytest.approx(77 / 255)


def test_br35h_sample_matches_manifest(br35h_dir):
    """A few real files of each Br35H mode and the PNG-named-.jpg quirk, checked against MANIFEST.tsv."""
    rows = [line.split("\t") for line in (br35h_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    picked: dict[tuple[str, str], list] = {}
    for row in rows:
        picked.setdefault((row[4], row[5]), []).append(row)
    for (mode, fmt), group in picked.items():
        for path, _sha, width, height, *_ in group[:2]:
            scan = read_scan(br35h_dir / path)
            check_output(scan)
            assert (scan.meta["format"], scan.meta["mode"]) == (fmt, mode)
            assert (scan.meta["width"], scan.meta["height"]) == (int(width), int(height))


# ---------------------------------------------------------------------------------------------------------
# bad input: one exception type, the file's name, plain words, never the directory


def png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims another size (a decompression bomb needs no real pixels)."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated(fmt: str) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format=fmt)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


BAD = {
    "empty.png": (b"", "empty"),
    "notes.png": (b"Patient looked fine.\n" * 20, "not an image"),
    "report.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 5, "not an image"),
    "archive.jpg": (zip_bytes(), "not an image"),
    "cut.jpg": (truncated("JPEG"), "truncated or damaged"),
    "cut.png": (truncated("PNG"), "truncated or damaged"),
    "dot.png": (png_bytes(1, 1), "too small"),
    "strip.png": (png_bytes(840, 40), "implausible"),  # 21:1
    "big.png": (png_with_header_size(9000, 9000), "too large"),  # 81 M pixels > 60 M, checked before decoding
    "bomb.png": (png_with_header_size(30000, 30000), "too large"),  # Pillow's own bomb check fires first
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(tmp_path, name):
    data, words = BAD[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ScanReadError) as info:
        read_scan(tmp_path / name)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and words in message
    assert str(tmp_path) not in message and "\n" not in message


def test_not_found_folder_and_pixel_budget(tmp_path):
    with pytest.raises(ScanReadError, match=r"^missing\.png: file not found"):
        read_scan(tmp_path / "missing.png")
    with pytest.raises(ScanReadError, match="folder"):
        read_scan(tmp_path)
    (tmp_path / "ok.png").write_bytes(png_bytes(300, 300))
    with pytest.raises(ScanReadError, match=r"ok\.png: the image is too large .*limit is 10,000"):
        read_scan(tmp_path / "ok.png", max_pixels=10_000)
    check_output(read_scan(tmp_path / "ok.png"))
    assert isinstance(ScanReadError("x"), ValueError)


def test_nan_float_tiff(tmp_path):
    a = np.zeros((32, 32), np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a).save(tmp_path / "nan.tif")
    with pytest.raises(ScanReadError, match=r"nan\.tif: .*not-a-number"):
        read_scan(tmp_path / "nan.tif")


# ---------------------------------------------------------------------------------------------------------
# DICOM


def make_dicom(path, arr, photometric="MONOCHROME2", bits_stored=None, ts=ExplicitVRLittleEndian,
               pixel_data=None, preamble=True, **elements):
    """Write a DICOM file: arr is (rows, cols), (frames, rows, cols) or (rows, cols, 3) for RGB."""
    arr = np.asarray(arr)
    rgb = photometric == "RGB"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    if not rgb and arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-3:-1] if rgb else arr.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_data is not False:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes() if pixel_data is None else pixel_data
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # a bare dataset: no 128-byte preamble, no 'DICM', no file meta
        ds.file_meta = FileMetaDataset()
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return path


def ramp(dtype, lo, hi, shape=(32, 32)):
    return np.linspace(lo, hi, shape[0] * shape[1]).reshape(shape).astype(dtype)


def test_dicom_8bit_unsigned_percentile_window(tmp_path):
    path = make_dicom(tmp_path / "a.dcm", ramp(np.uint8, 0, 255), PixelSpacing=[0.5, 0.6], SliceThickness=3)
    scan = read_scan(path)
    check_output(scan)
    m = scan.meta
    assert (m["format"], m["mode"], m["modality"], m["bits_stored"]) == ("DICOM", "MONOCHROME2", "MR", 8)
    assert m["pixel_spacing"] == [0.5, 0.6] and m["slice_thickness"] == 3.0 and m["frames"] == 1
    assert m["window"]["source"] == "percentile"
    native = read_scan(path, size=None).image
    assert native[0, 0] == 0.0 and native[-1, -1] == 1.0 and native.shape == (32, 32)


def test_dicom_16bit_unsigned_with_window(tmp_path):
    path = make_dicom(tmp_path / "b.dcm", ramp(np.uint16, 0, 4095), bits_stored=12,
                      WindowCenter=1000, WindowWidth=500)
    scan = read_scan(path, size=None)
    assert scan.meta["window"]["source"] == "dicom"
    assert (scan.meta["window"]["center"], scan.meta["window"]["width"]) == (1000.0, 500.0)
    values = ramp(np.uint16, 0, 4095).astype(float)
    assert (scan.image[values < 740] == 0).all() and (scan.image[values > 1260] == 1).all()
    middle = np.abs(values - 1000) < 3
    assert np.allclose(scan.image[middle], 0.5, atol=0.02)


def test_dicom_signed_with_rescale(tmp_path):
    stored = ramp(np.int16, -1000, 1000)
    path = make_dicom(tmp_path / "c.dcm", stored, RescaleSlope=2, RescaleIntercept=-100,
                      WindowCenter=0, WindowWidth=400)
    image = read_scan(path, size=None).image
    real = stored * 2.0 - 100  # the window is in rescaled units
    assert (image[real <= -201] == 0).all() and (image[real >= 201] == 1).all()
    assert np.allclose(image[np.abs(real) < 2], 0.5, atol=0.01)
    assert read_scan(path).meta["bits_stored"] == 16


def test_dicom_multivalued_window_uses_first(tmp_path):
    path = make_dicom(tmp_path / "d.dcm", ramp(np.uint16, 0, 1000), WindowCenter=[40, 400], WindowWidth=[80, 2000])
    w = read_scan(path).meta["window"]
    assert (w["center"], w["width"], w["source"], w["index"], w["count"]) == (40.0, 80.0, "dicom", 0, 2)


def test_dicom_monochrome1_inverted(tmp_path):
    arr = np.zeros((32, 32), np.uint16)
    arr[:, 16:] = 4095  # bright stored values on the right
    scan = read_scan(make_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", bits_stored=12), size=None)
    assert scan.image[:, 16:].max() == 0.0 and scan.image[:, :16].min() == 1.0
    assert scan.meta["mode"] == "MONOCHROME1"


def test_dicom_multiframe(tmp_path):
    stack = np.stack([ramp(np.uint16, 0, 500) + 1000 * k for k in range(5)])
    path = make_dicom(tmp_path / "stack.dcm", stack, WindowCenter=2750, WindowWidth=5500)
    assert dicom_frame_count(path) == 5
    middle = read_scan(path)
    assert middle.meta["frames"] == 5 and middle.meta["frame"] == 2
    means = [read_scan(path, size=None, frame=k).image.mean() for k in range(5)]
    assert means == sorted(means) and read_scan(path, size=None).image.mean() == means[2]
    with pytest.raises(ScanReadError, match=r"^stack\.dcm: frame 6 does not exist.*frames 1 to 5"):
        read_scan(path, frame=5)


def test_dicom_rgb(tmp_path):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[..., 0] = 255
    scan = read_scan(make_dicom(tmp_path / "rgb.dcm", arr, "RGB"), size=None)
    assert scan.meta["mode"] == "RGB" and scan.meta["window"] is None
    assert scan.image.mean() == pytest.approx(0.299, abs=1e-3)


def test_colour_share_of_files(tmp_path, examples_dir):
    """The out-of-distribution check reads each file's share of pixels in colour (MR slices are grayscale)."""
    g = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.merge("RGB", [Image.fromarray(g)] * 3).save(tmp_path / "gray_rgb.jpg", quality=90)
    tinted = np.stack([g, g // 3, 255 - g], axis=2)
    tinted[:, :32] = g[:, :32, None]  # the left half gray, the right half in colour
    Image.fromarray(tinted).save(tmp_path / "half.png")
    Image.fromarray(tinted).save(tmp_path / "half.jpg", quality=95)
    assert read_scan(tmp_path / "gray_rgb.jpg").meta["colour_fraction"] == 0.0  # RGB JPEG of a gray image
    assert read_scan(tmp_path / "half.png").meta["colour_fraction"] == pytest.approx(0.5, abs=0.05)
    assert read_scan(tmp_path / "half.jpg").meta["colour_fraction"] == pytest.approx(0.5, abs=0.08)
    assert read_scan(tmp_path / "half.jpg", colour=False).meta["colour_fraction"] is None  # data sets skip it
    # the grayscale decode of a colour JPEG is the one it always was (the share comes from a second decode)
    with Image.open(tmp_path / "half.jpg") as im:
        im.draft("L", (256, 256))
        assert np.array_equal(read_scan(tmp_path / "half.jpg", size=None).image, np.asarray(im, np.float32) / 255)
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[..., 0] = 255
    assert read_scan(make_dicom(tmp_path / "rgb.dcm", arr, "RGB")).meta["colour_fraction"] == 1.0
    assert read_scan(make_dicom(tmp_path / "mr.dcm", arr[..., 0])).meta["colour_fraction"] == 0.0
    for f in examples_dir.iterdir():
        if f.suffix in (".jpg", ".png"):
            assert read_scan(f).meta["colour_fraction"] < 0.05, f.name


def test_dicom_without_pixel_data(tmp_path):
    path = make_dicom(tmp_path / "sr.dcm", np.zeros((32, 32), np.uint8), pixel_data=False)
    with pytest.raises(ScanReadError, match=r"^sr\.dcm: this is a DICOM file without image data"):
        read_scan(path)


def test_dicom_compressed_without_decoder(tmp_path):
    fake = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    path = make_dicom(tmp_path / "ls.dcm", np.zeros((32, 32), np.uint16), ts=JPEGLSLossless, pixel_data=fake)
    with pytest.raises(ScanReadError) as info:
        read_scan(path)
    message = str(info.value)
    assert message.startswith("ls.dcm: the image is compressed with JPEG-LS")
    assert "Install one of" in message and ("pylibjpeg" in message or "gdcm" in message)


def test_dicom_compressed_damaged(tmp_path):
    fake = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])  # JPEG 2000 start, then garbage
    path = make_dicom(tmp_path / "j2k.dcm", np.zeros((32, 32), np.uint16), ts=JPEG2000, pixel_data=fake)
    with pytest.raises(ScanReadError, match=r"^j2k\.dcm: the image is compressed with JPEG 2000"):
        read_scan(path)


def test_dicom_without_preamble(tmp_path):
    path = make_dicom(tmp_path / "bare.img", ramp(np.uint16, 0, 4095), preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    scan = read_scan(path)
    assert scan.meta["format"] == "DICOM" and scan.image.max() == 1.0


def test_dicom_non_finite(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    values = np.ones((32, 32), np.float32)
    values[5, 5] = np.inf
    ds.FloatPixelData = values.tobytes()
    ds.save_as(tmp_path / "inf.dcm", enforce_file_format=True)
    with pytest.raises(ScanReadError, match=r"^inf\.dcm: .*not-a-number or infinite"):
        read_scan(tmp_path / "inf.dcm")


@pytest.mark.parametrize("example,modality", [("mr", "MR"), ("ct", "CT")])
def test_pydicom_bundled_examples(example, modality):
    from pydicom import examples

    scan = read_scan(examples.get_path(example))
    check_output(scan)
    assert scan.meta["modality"] == modality and scan.meta["window"]["source"] in ("dicom", "percentile")
    assert scan.image.std() > 0.05


def test_dicom_identifying_data_never_returned(tmp_path):
    identifying = {
        "PatientName": "Doe^Janeqx", "PatientID": "PID998877", "PatientBirthDate": "19610203",
        "StudyDate": "20240105", "SeriesDate": "20240106", "AccessionNumber": "ACC55123",
        "InstitutionName": "Saint Examplia Hospital", "ReferringPhysicianName": "Who^Doctorqz",
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "StudyID": "STUDY4242",
        "OtherPatientIDs": "OPID31337", "PatientAddress": "12 Quietlane", "OperatorsName": "Tech^Opz",
    }
    path = make_dicom(tmp_path / "phi.dcm", ramp(np.uint16, 0, 4095), WindowCenter=2000, WindowWidth=4000,
                      **identifying)
    scan = read_scan(path)
    text = str(scan.meta) + repr(scan)
    ds = pydicom.dcmread(path)
    values = list(identifying.values()) + [str(ds.SOPInstanceUID), str(ds.file_meta.MediaStorageSOPInstanceUID)]
    values += ["Doe", "Janeqx", "Doctorqz", "2024", "1961"]
    for value in values:
        assert value not in text, value


def test_frame_count_of_plain_image(examples_dir):
    assert dicom_frame_count(examples_dir / "no35.jpg") == 1
    with pytest.raises(ScanReadError, match="not found"):
        dicom_frame_count(examples_dir / "nothing.dcm")
