"""The app as a user sees it: `python app.py` in a subprocess, driven by a real headless Chromium (Playwright).

Clicks an example, runs each attack, uploads a bad file after a good one, switches the defence off, presses Stop,
uses the Batch tab with a DICOM named after a patient, and checks what is on the page: texts, which panels are
empty, no stale verdict, no file name, the error column within 1400 px; plus a screenshot that is not blank.
The last test sends SIGTERM and checks that every temporary file is gone and the log is one line per user error
with no file name and no traceback.

Skipped (with the reason) when Playwright's Python package or a Chromium binary is missing; CI installs the Debian
`chromium` package. Set MEDFEDPURE_SCREENSHOTS=DIR to keep the screenshots.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app import EXAMPLES, REPO_ROOT, SECRET_NAME, free_port, make_dicom, model_source  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser")
                              or "") if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SECRETS = ("Doe", "Jane", "MRN-123456", "SECRET-ID")
TIMEOUT_MS = 180_000  # one analysis on a busy 2-core CPU


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with code {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"app.py did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, process, GRADIO_TEMP_DIR, log path) of `python app.py` on a free port."""
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    cmd = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    model = model_source(tmp)
    if model is not None:
        cmd += ["--model", model]
    temp = tmp / "gradio"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(temp), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDFEDPURE_MODEL", None)
    log = tmp / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc, log)
        yield url, proc, temp, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server[0])
    pg.wait_for_selector("text=Example scans")
    yield pg
    pg.close()


def shot(page, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("MEDFEDPURE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return np.asarray(Image.open(path).convert("RGB"))


def text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def load_example(page, label: str) -> None:
    page.get_by_text(label, exact=True).click()
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")


def upload(page, path: Path, selector: str = "#mfp-scan input[type=file]") -> None:
    page.locator(selector).set_input_files(str(path))


def analyze(page) -> str:
    """Press Analyze; wait for the new verdict (the page clears the old one first) -> its text."""
    page.click("#mfp-run")
    page.wait_for_function("() => { const v = document.querySelector('#mfp-verdict h3');"
                           " return v && !document.querySelector('#mfp-verdict .progress-text'); }")
    return text(page, "#mfp-verdict")


def choose_attack(page, label: str) -> None:
    page.click("#mfp-attack input")
    page.get_by_role("option", name=label, exact=True).click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def assert_no_secret(page_text: str) -> None:
    for s in SECRETS:
        assert s not in page_text, f"{s!r} appears on the page"


# ------------------------------------------------------------------------------------------------ tests
def test_example_analysis_shows_every_stage_and_a_drawn_page(page, tmp_path):
    load_example(page, "tumour (y1431)")
    assert "data:image/png" in page.inner_html("#mfp-preview")
    verdict = analyze(page)
    assert verdict.startswith("Answer:") and "Out-of-distribution check" in verdict
    assert ("Flagged as suspicious" in verdict) != ("Not flagged" in verdict)
    panels = text(page, "#mfp-panels")
    assert "No attack: the original itself is analyzed." in panels and "No attack: nothing changed." in panels
    assert page.locator("#mfp-panels figure").count() == 6 and page.locator("#mfp-panels img").count() >= 3
    assert "Detector score vs this hospital's clean scans" in panels and "% of clean scans below" in panels
    assert "Classifier on the analyzed scan (before the defence)" in panels
    if "Not purified" in panels:  # the empty Purified panel says why, and no before/after slider is offered
        assert not page.locator("#mfp-compare").is_visible()
    assert "Device" in text(page, "#mfp-timings")
    report = re.sub(r"\s+", "", text(page, "#mfp-report"))
    assert re.search(r"medfedpure-scan-[0-9a-f]{8}\.pdf", report), report
    img = shot(page, tmp_path, "example")
    assert img.shape[1] == 1400 and img.std() > 15, f"screenshot looks blank (pixel std {img.std():.1f})"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500
    top = img[:300].reshape(-1, 3).astype(int)  # the amber research-use banner near the top
    amber = (top[:, 0] > 230) & (top[:, 1] > 150) & (top[:, 1] < 235) & (top[:, 2] < 120)
    assert amber.sum() > 200, "the research-use disclaimer banner is not visible at the top of the page"
    body = page.inner_text("body")
    assert "each analysis stops after" in body and "attack steps" in body  # the time budget is stated
    header = text(page, "#mfp-header")  # the page was served before the models loaded; now it names the device
    assert "device cpu" in header or "device cuda" in header
    assert "loading the models" not in header


def test_bad_file_after_a_good_one_leaves_no_stale_result(page, tmp_path):
    load_example(page, "tumour (y1349)")
    assert analyze(page).startswith("Answer:")
    bad = tmp_path / f"{SECRET_NAME}.png"
    bad.write_text("a text file, not a scan\n")
    upload(page, bad)
    page.wait_for_selector("#mfp-scan-info >> text=Cannot read this file")
    assert text(page, "#mfp-verdict") == "" and text(page, "#mfp-panels") == ""  # the old answer is gone
    assert text(page, "#mfp-timings") == ""
    verdict = analyze(page)
    assert verdict.startswith("Cannot analyze") and "No scan is loaded" in verdict
    assert "Answer" not in verdict and "Flagged" not in verdict and "Not flagged" not in verdict
    assert text(page, "#mfp-panels") == "" and page.locator("#mfp-panels img").count() == 0
    assert_no_secret(page.inner_text("body"))
    assert SECRET_NAME not in page.content()
    shot(page, tmp_path, "bad-after-good")
    load_example(page, "tumour (y1349)")  # the same example again: its earlier copy was deleted once read
    assert analyze(page).startswith("Answer:")


def test_each_attack(page, tmp_path):
    load_example(page, "tumour (y1493)")
    for label, name, steps in (("FGSM", "FGSM", None), ("PGD (L-inf)", "PGD", 3),
                               ("adaptive PGD through the whole defence", "adaptive", 1)):
        choose_attack(page, label)
        if steps is not None:
            set_number(page, "mfp-steps", steps)
        verdict = analyze(page)
        assert verdict.startswith("Answer:") and f"{name} attack (eps" in verdict, verdict
        panels = text(page, "#mfp-panels")
        assert re.search(r"Perturbation, amplified x\d+", panels) and "L-inf" in panels
        assert "the scan before the attack" in panels  # the clean scan's score on the plot
    page.locator("#mfp-purify-always input").check()
    analyze(page)
    page.locator("#mfp-compare").wait_for(state="visible", timeout=20_000)  # the before/after slider
    assert "Purified (t* =" in text(page, "#mfp-panels")
    shot(page, tmp_path, "adaptive-purified")


def test_defence_off(page, tmp_path):
    load_example(page, "no tumour (no411)")
    page.locator("#mfp-purify-always input").check()
    page.locator("#mfp-defence input").uncheck()
    always = page.locator("#mfp-purify-always input")
    page.wait_for_function("() => document.querySelector('#mfp-purify-always input').disabled")
    assert not always.is_checked()
    verdict = analyze(page)
    assert "defence off" in verdict and "Defence is off" in verdict
    panels = text(page, "#mfp-panels")
    assert "Answer (defence off: the classifier's own)" in panels and "after the defence" not in panels
    assert "Defence off: nothing is purified." in panels and not page.locator("#mfp-compare").is_visible()
    page.locator("#mfp-defence input").check()
    page.wait_for_function("() => !document.querySelector('#mfp-purify-always input').disabled")


def test_blank_scan_gets_no_diagnosis(page, tmp_path):
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(black)
    upload(page, black)
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    verdict = analyze(page)
    assert verdict.startswith("No diagnosis: the image is blank") and "Answer:" not in verdict
    assert "Not meaningful" in text(page, "#mfp-panels")


def test_a_colour_photograph_gets_no_diagnosis(page, tmp_path):
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real colour photograph
    if not photo.is_file():
        pytest.skip("matplotlib's sample photograph is not installed")
    upload(page, photo)
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    verdict = analyze(page)
    shot(page, tmp_path, "colour_photograph")
    assert verdict.startswith("No diagnosis: this is a colour picture, not an MRI slice"), verdict[:200]
    assert "Answer:" not in verdict and "Not meaningful" in text(page, "#mfp-panels")


def test_stop_button_ends_a_long_attack(page, tmp_path):
    load_example(page, "tumour (y1493)")
    choose_attack(page, "adaptive PGD through the whole defence")
    set_number(page, "mfp-steps", 10)
    page.click("#mfp-run")
    page.wait_for_selector("#mfp-verdict >> text=/adaptive attack: step [1-9] of 10/")  # per-step progress
    t = time.monotonic()
    page.click("#mfp-stop")
    page.wait_for_selector("#mfp-verdict h3 >> text=Stopped")
    assert "Nothing is shown for an unfinished analysis" in text(page, "#mfp-verdict")
    assert text(page, "#mfp-panels") == "" and time.monotonic() - t < 30
    shot(page, tmp_path, "stopped")


def test_dicom_named_after_a_patient_leaves_no_trace_on_the_page(page, tmp_path):
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}.dcm", frames=3)
    upload(page, dcm)
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    assert "frame 2 of 3" in text(page, "#mfp-scan-info")
    frame = page.locator("#mfp-frame")
    assert frame.is_visible() and "1 to 3" in frame.inner_text()  # the picker counts from 1, as the page does
    assert analyze(page).startswith(("Answer:", "No diagnosis"))
    html = page.content()
    assert_no_secret(page.inner_text("body"))
    assert SECRET_NAME not in html and "Doe^Jane" not in html


def test_batch_tab_names_rows_by_hash_and_shows_the_error_column(page, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    bad = tmp_path / f"{SECRET_NAME}_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}_slice.dcm", frames=1)
    page.locator("#mfp-batch-files input[type=file]").set_input_files([str(EXAMPLES / "y1349.jpg"), str(bad),
                                                                       str(dcm)])
    page.wait_for_selector("#mfp-batch-status >> text=3 file(s) loaded")
    assert "#2: cannot be read" in text(page, "#mfp-batch-status")
    page.click("#mfp-batch-run")
    page.wait_for_selector("#mfp-batch-status >> text=2 analyzed, 1 error")
    table = page.locator("#mfp-batch-table")
    cell = table.get_by_text(re.compile(r"^error: ")).first
    box = cell.bounding_box()
    assert box is not None and box["x"] + 40 < 1400, "the error column is off-screen at 1400 px"
    assert table.get_by_text(re.compile(r"^scan-[0-9a-f]{8}$")).count() >= 2
    assert_no_secret(page.inner_text("body"))
    assert SECRET_NAME not in page.content()
    shot(page, tmp_path, "batch")


def test_closing_the_page_deletes_its_reports(browser, server):
    url, proc, temp, log = server
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("text=Example scans")
    load_example(pg, "no tumour (no35)")
    analyze(pg)
    before = {p for p in temp.rglob("medfedpure-scan-*.pdf")}
    assert before, "no report was written"
    pg.close()  # Gradio's unload event: the session's folder goes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.exists() for p in before):
        time.sleep(0.5)
    assert not any(p.exists() for p in before), "the report outlived its page"


def test_zz_sigterm_removes_every_file_and_the_log_is_clean(server):
    url, proc, temp, log = server
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    left = [p for p in temp.rglob("*") if p.is_file()]
    assert not left, f"files left after SIGTERM: {len(left)}, e.g. {left[:3]}"
    text_log = log.read_text()
    assert "SIGTERM received: removing temporary files" in text_log
    assert "Traceback" not in text_log
    for s in SECRETS:
        assert s not in text_log, f"{s!r} appears in the server log"
    errors = [ln for ln in text_log.splitlines() if "user error" in ln]
    assert errors and all(ln.startswith("20") for ln in errors)  # each one line of its own
