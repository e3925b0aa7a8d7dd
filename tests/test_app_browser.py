"""The app as a user sees it: `python app.py` in a subprocess, driven by a real headless Chromium (Playwright).

Clicks an example, runs each attack, uploads a bad file after a good one, switches the defence off, presses Stop
(no error badge, on both tabs), picks DICOM frames (counted from 1) and NIfTI planes and slices (side letters on
the slice), uses the Batch tab with a DICOM named after a patient and a volume, and checks what is on the page:
the answer, its probabilities and the progress in view beside the scan and the controls at 1400 x 1000 and
1280 x 800, plain words with the numbers in a fold, the failed-defence sentence, text contrast of at least 4.5:1,
dropdown lists that close when the focus leaves, the whole flow by keyboard, a phone width without overlapping
text, the batch table readable at 1400 px, no stale verdict, no file name; and screenshots that are not blank.
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
from test_app import (  # noqa: E402
    EXAMPLES, REPO_ROOT, SECRET_NAME, free_port, make_dicom, make_nifti, model_source, nifti_file,
)

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


def wait_answer(page) -> str:
    """Wait for a finished verdict (a heading, no progress over it) -> its text."""
    page.wait_for_function("() => { const v = document.querySelector('#mfp-verdict h3');"
                           " return v && !/^(Start here|Scan loaded|Stopping)/.test(v.innerText)"
                           " && !document.querySelector('#mfp-verdict .progress-text'); }")
    return text(page, "#mfp-verdict")


def analyze(page) -> str:
    """Press Analyze; wait for the new verdict (the page clears the old one first) -> its text."""
    page.click("#mfp-run")
    return wait_answer(page)


def choose_attack(page, label: str) -> None:
    page.locator("#mfp-attack").get_by_text(label, exact=True).click()


def more_settings(page) -> None:
    """Open the scan tab's "More settings" fold (attack strength, steps, purify always, seed, EOT, report)."""
    if not page.locator("#mfp-steps").is_visible():
        page.click("#mfp-more button")
        page.locator("#mfp-steps").wait_for(state="visible")


def set_number(page, elem_id: str, value) -> None:
    more_settings(page)
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def in_view(page, selector: str) -> bool:
    """The element's box lies inside the viewport (without scrolling)."""
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] + 1 and \
        box["x"] >= 0 and box["x"] + box["width"] <= size["width"] + 1


def open_details(page) -> str:
    page.click("#mfp-verdict summary")
    return text(page, "#mfp-verdict")


def error_badges(page) -> int:
    """Gradio's red error markers: a status tracker in its error state, or an error toast."""
    return page.evaluate("() => document.querySelectorAll('[data-testid=\"status-tracker\"].error, "
                         ".toast-body.error, .error-message').length")


# Every visible text node's colour against the colours behind it (composited up the tree; opacity counted);
# disabled controls, SVG text and Gradio's footer are exempt (as WCAG exempts inactive controls).
CONTRAST_JS = r"""
() => {
  const parse = (c) => { const m = c && c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(parseFloat); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  const over = (top, bottom) => ({r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
                                  b: top.b * top.a + bottom.b * (1 - top.a), a: 1});
  const background = (el) => { const chain = []; for (let e = el; e; e = e.parentElement) chain.push(e);
    let c = {r: 255, g: 255, b: 255, a: 1};
    for (const e of chain.reverse()) { const b = parse(getComputedStyle(e).backgroundColor); if (b && b.a > 0) c = over(b, c); }
    return c; };
  const bad = []; const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode; const text = node.textContent.trim(); if (!text) continue;
    const el = node.parentElement; if (!el || seen.has(el)) continue; seen.add(el);
    if (el.closest('svg, [disabled], [aria-disabled="true"], .disabled, label.disabled, footer')) continue;
    const st = getComputedStyle(el); if (st.visibility === 'hidden' || st.display === 'none') continue;
    const box = el.getBoundingClientRect(); if (box.width === 0 || box.height === 0) continue;
    let hidden = false; for (let e = el; e; e = e.parentElement) { const s = getComputedStyle(e);
      if (s.display === 'none' || s.visibility === 'hidden') { hidden = true; break; } }
    if (hidden) continue;
    const lab = el.closest('label'); if (lab && lab.querySelector('input:disabled')) continue;
    const bg = background(el); let fg = parse(st.color); if (!fg) continue; fg = over(fg, bg);
    let op = 1; for (let e = el; e; e = e.parentElement) op *= parseFloat(getComputedStyle(e).opacity);
    if (op < 0.05) continue;  // transparent: not seen
    if (op < 1) fg = over({...fg, a: op}, bg);
    const a = lum(fg), b = lum(bg); const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) bad.push({text: text.slice(0, 50), ratio: Math.round(ratio * 100) / 100, color: st.color,
                               cls: (el.className && el.className.baseVal === undefined ? el.className : '').slice(0, 60),
                               tag: el.tagName});
  }
  return bad;
}
"""


def low_contrast(page) -> list:
    """Visible texts whose contrast with their background is under 4.5:1 (WCAG AA for normal text)."""
    return page.evaluate(CONTRAST_JS)


def assert_no_secret(page_text: str) -> None:
    for s in SECRETS:
        assert s not in page_text, f"{s!r} appears on the page"


# ------------------------------------------------------------------------------------------------ tests
def test_example_analysis_shows_every_stage_and_a_drawn_page(page, tmp_path):
    load_example(page, "tumour (y1431)")
    assert "data:image/png" in page.inner_html("#mfp-preview")
    verdict = analyze(page)
    assert verdict.startswith("Answer:") and re.search(r"\((>99|<1|\d+)%, (very sure|fairly sure|leaning|unsure)\)", verdict)
    assert "Why: the numbers behind this answer" in verdict and "Out-of-distribution check" not in verdict
    details = open_details(page)  # the statistics wait in the fold
    assert "Out-of-distribution check" in details
    assert ("Flagged as suspicious" in details) != ("Not flagged" in details)
    panels = text(page, "#mfp-panels")
    assert "No attack: the original itself is analyzed." in panels and "No attack: nothing changed." in panels
    assert page.locator("#mfp-panels figure").count() == 6 and page.locator("#mfp-panels img").count() >= 3
    assert "Detector score vs this hospital's clean scans" in panels and "% of clean scans below" in panels
    bars = text(page, "#mfp-probabilities")
    assert "Final answer (after the defence)" in bars and "Classifier on the analyzed scan (before the defence)" in bars
    assert not re.search(r"\d\.\d%", bars)  # whole percentages
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
    assert "loading the models" not in header and "Hospital 0" not in body


@pytest.mark.parametrize("size", [(1400, 1000), (1280, 800)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_answer_and_progress_in_view_beside_the_scan_and_the_controls(browser, server, tmp_path, size):
    """Without scrolling: a first step on a fresh page; after Analyze the verdict, its probabilities, the scan
    and the Analyze button; during a long run the progress."""
    pg = browser.new_page(viewport={"width": size[0], "height": size[1]})
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server[0])
        pg.wait_for_selector("text=Example scans")
        assert text(pg, "#mfp-verdict").startswith("Start here") and in_view(pg, "#mfp-verdict")
        assert in_view(pg, "#mfp-run") and in_view(pg, "#mfp-examples")
        load_example(pg, "tumour (y1431)")
        assert text(pg, "#mfp-verdict").startswith("Scan loaded")
        choose_attack(pg, "PGD (several small steps)")
        assert analyze(pg).startswith("Answer:")
        for selector in ("#mfp-verdict h3", "#mfp-probabilities .mfp-bar", "#mfp-run", "#mfp-stop",
                         "#mfp-preview img"):
            assert in_view(pg, selector), f"{selector} is out of view at {size}"
        shot(pg, tmp_path, f"answer-{size[0]}x{size[1]}")
        choose_attack(pg, "Adaptive (attacks the defence too; slow)")
        pg.click("#mfp-run")
        pg.wait_for_selector("#mfp-verdict >> text=/attack: step [1-9] of/")
        assert in_view(pg, "#mfp-verdict .progress-level"), "the progress is out of view"
        shot(pg, tmp_path, f"progress-{size[0]}x{size[1]}")
        assert wait_answer(pg).startswith("Answer:")
    finally:
        pg.close()


def test_failed_defence_is_said_plainly(page, tmp_path):
    """After an attack the verdict compares the answer with the clean scan's own, in its first lines."""
    load_example(page, "tumour (y1431)")
    choose_attack(page, "PGD (several small steps)")
    verdict = analyze(page)
    headline = verdict.splitlines()[0]
    plain = verdict.split("Why: the numbers")[0]
    assert "The PGD attack (strength 8/255)" in plain
    sentences = ("The defence failed: the clean scan's answer was", "The defence restored the clean scan's answer",
                 "The answer is the clean scan's")
    assert sum(s in plain for s in sentences) == 1, plain
    assert ("The defence failed" in plain) == ("the defence failed" in headline)
    assert ("restored the clean" in plain) == ("the defence restored it" in headline)
    shot(page, tmp_path, "failed-defence")


def test_bad_file_after_a_good_one_leaves_no_stale_result(page, tmp_path):
    load_example(page, "tumour (y1349)")
    assert analyze(page).startswith("Answer:")
    bad = tmp_path / f"{SECRET_NAME}.png"
    bad.write_text("a text file, not a scan\n")
    upload(page, bad)
    page.wait_for_selector("#mfp-scan-info >> text=Cannot read this file")
    assert text(page, "#mfp-verdict") == "" and text(page, "#mfp-panels") == ""  # the old answer is gone
    assert text(page, "#mfp-timings") == "" and text(page, "#mfp-probabilities") == ""
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
    for label, name, steps in (("FGSM (one step)", "FGSM", None), ("PGD (several small steps)", "PGD", 3),
                               ("Adaptive (attacks the defence too; slow)", "adaptive", 1)):
        choose_attack(page, label)
        if steps is not None:
            set_number(page, "mfp-steps", steps)
        verdict = analyze(page)
        assert verdict.startswith("Answer:") and f"The {name} attack (strength" in verdict, verdict
        panels = text(page, "#mfp-panels")
        assert re.search(r"What the attack changed, amplified x\d+", panels) and "L-inf" in panels
        assert "the scan before the attack" in panels  # the clean scan's score on the plot
    more_settings(page)
    page.locator("#mfp-purify-always input").check()
    analyze(page)
    page.locator("#mfp-compare").wait_for(state="visible", timeout=20_000)  # the before/after slider
    assert "Purified (depth t* =" in text(page, "#mfp-panels")
    shot(page, tmp_path, "adaptive-purified")


def test_defence_off(page, tmp_path):
    load_example(page, "no tumour (no411)")
    more_settings(page)
    page.locator("#mfp-purify-always input").check()
    page.locator("#mfp-defence input").uncheck()
    always = page.locator("#mfp-purify-always input")
    page.wait_for_function("() => document.querySelector('#mfp-purify-always input').disabled")
    assert not always.is_checked()
    verdict = analyze(page)
    assert "defence off" in verdict.splitlines()[0] and "The defence is off" in verdict
    bars = text(page, "#mfp-probabilities")
    assert "Answer (defence off: the classifier's own)" in bars and "after the defence" not in bars
    assert "Defence off: nothing is purified." in text(page, "#mfp-panels")
    assert not page.locator("#mfp-compare").is_visible()
    page.locator("#mfp-defence input").check()
    page.wait_for_function("() => !document.querySelector('#mfp-purify-always input').disabled")


def test_blank_scan_gets_no_diagnosis(page, tmp_path):
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(black)
    upload(page, black)
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    verdict = analyze(page)
    assert verdict.startswith("No diagnosis: the image is blank") and "Answer" not in verdict
    assert "tumour" not in verdict.split("Why: the numbers")[0]  # no answer at all in a "No diagnosis" verdict
    assert "Not meaningful" in text(page, "#mfp-probabilities")


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
    assert "Answer" not in verdict and "Not meaningful" in text(page, "#mfp-probabilities")


# Timing-dependent (it must catch a batch mid-attack; in one clean CI run of three the batch's step text never showed
# within 180 s): run deliberately with `-m slow`.
@pytest.mark.slow
def test_stop_ends_a_long_attack_without_an_error_badge(page, tmp_path):
    """Stop, three times on the scan tab and twice on the Batch tab: the request ends, the box says "Stopped",
    and no red error marker appears anywhere (Gradio's cancel used to put one beside it in 2 of 5 stops)."""
    load_example(page, "tumour (y1493)")
    choose_attack(page, "Adaptive (attacks the defence too; slow)")
    for k in range(3):
        page.click("#mfp-run")
        page.wait_for_selector("#mfp-verdict >> text=/adaptive attack: step [1-9] of/")  # per-step progress
        t = time.monotonic()
        page.click("#mfp-stop")
        page.wait_for_selector("#mfp-verdict h3 >> text=Stopped")
        page.wait_for_timeout(1500)  # long enough for a late error to show
        assert "Nothing is shown for an unfinished analysis" in text(page, "#mfp-verdict")
        assert text(page, "#mfp-panels") == "" and time.monotonic() - t < 30
        assert error_badges(page) == 0 and "Error" not in text(page, "#mfp-verdict"), f"error badge, stop {k + 1}"
    shot(page, tmp_path, "stopped")
    page.get_by_role("tab", name="Batch").click()
    copies = []
    for k in range(16):  # 16 scans, 20 PGD steps: long enough to be stopped on a fast machine
        copies.append(tmp_path / f"copy{k}.jpg")
        copies[-1].write_bytes((EXAMPLES / ("y1349.jpg", "no35.jpg")[k % 2]).read_bytes())
    page.locator("#mfp-batch-files input[type=file]").set_input_files([str(p) for p in copies])
    page.wait_for_selector("#mfp-batch-status >> text=16 file(s) loaded")
    page.locator("#mfp-batch-attack").get_by_text("PGD (several small steps)", exact=True).click()
    page.click("#mfp-batch-more button")
    steps = page.locator("#mfp-batch-steps input[type=number]")
    steps.fill("20")
    steps.press("Enter")
    for k in range(2):
        page.click("#mfp-batch-run")
        page.wait_for_selector("#mfp-batch-status >> text=/PGD attack: step [1-9] of 20/")
        page.click("#mfp-batch-stop")
        page.wait_for_selector("#mfp-batch-status >> text=/Stopped at your request/")
        page.wait_for_timeout(1500)
        assert error_badges(page) == 0 and "Error" not in text(page, "#mfp-batch-status"), f"batch stop {k + 1}"


def test_dicom_frames_count_from_one_and_leave_no_trace(page, tmp_path):
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}.dcm", frames=5)
    upload(page, dcm)
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    assert "frame 3 of 5" in text(page, "#mfp-scan-info")
    frame = page.locator("#mfp-frame")
    assert frame.is_visible() and "1 to 5" in frame.inner_text()  # the picker counts from 1
    assert page.locator("#mfp-frame input[type=number]").input_value() == "3"
    set_frame = page.locator("#mfp-frame input[type=number]")
    set_frame.fill("5")
    set_frame.press("Enter")
    page.locator("#mfp-frame input[type=range]").dispatch_event("pointerup")
    page.wait_for_selector("#mfp-scan-info >> text=frame 5 of 5")
    assert analyze(page).startswith(("Answer:", "No diagnosis"))
    assert "Original (frame 5 of 5)" in text(page, "#mfp-panels")
    page.get_by_text("All numbers (JSON)").click()
    assert re.search(r'"?frame"?\s*:\s*5\b', text(page, "#mfp-col-answer") + page.inner_text("body"))
    html = page.content()
    assert_no_secret(page.inner_text("body"))
    assert SECRET_NAME not in html and "Doe^Jane" not in html


def test_nifti_volume_plane_slice_and_sides(page, tmp_path):
    volume = tmp_path / f"{SECRET_NAME}.nii.gz"
    volume.write_bytes(nifti_file(tmp_path).read_bytes())
    upload(page, volume)
    page.wait_for_selector("#mfp-scan-info >> text=NIfTI volume")
    assert page.locator("#mfp-plane").is_visible() and "axial slice" in text(page, "#mfp-scan-info")
    assert re.search(r"Slice \(1 to \d+; starts at the middle of the head\)", page.inner_text("#mfp-frame"))
    sides = page.locator("#mfp-preview .mfp-side").all_inner_texts()
    assert sides == ["R", "L", "A", "P"]  # radiological: the subject's right on the image's left
    page.locator("#mfp-plane").get_by_text("sagittal", exact=True).click()
    page.wait_for_selector("#mfp-scan-info >> text=sagittal slice")
    assert page.locator("#mfp-preview .mfp-side").all_inner_texts() == ["A", "P", "S", "I"]
    verdict = analyze(page)
    assert verdict.startswith(("Answer:", "No diagnosis"))
    assert re.search(r"Original \(sagittal slice \d+ of \d+\)", text(page, "#mfp-panels"))
    shot(page, tmp_path, "nifti-sagittal")
    html = page.content()
    assert_no_secret(page.inner_text("body"))
    assert SECRET_NAME not in html
    # a broken volume: one line, the page stays up
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(volume.read_bytes()[:2000])
    upload(page, broken)
    page.wait_for_selector("#mfp-scan-info >> text=Cannot read this file")
    assert "truncated or damaged" in text(page, "#mfp-scan-info") and not page.locator("#mfp-plane").is_visible()
    load_example(page, "no tumour (no35)")
    assert analyze(page).startswith(("Answer:", "No diagnosis"))


def test_text_contrast_keyboard_flow_and_dropdowns(page, tmp_path):
    page.wait_for_function("() => !document.querySelector('.progress-text')")  # the page has settled
    assert low_contrast(page) == [], low_contrast(page)
    # the whole flow by keyboard: an example, an attack, Analyze
    page.locator("#mfp-about button").first.focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => !!document.activeElement.closest('#mfp-examples')"):
            break
    else:
        raise AssertionError("Tab never reached the example scans")
    page.keyboard.press("Enter")
    page.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
    # tabbing through the hospital dropdown leaves no list open behind it
    page.locator("#mfp-hospital input").focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Tab")
    page.wait_for_timeout(500)
    open_lists = page.evaluate("() => [...document.querySelectorAll('.option-list, [role=listbox]')]"
                               ".filter(e => e.getBoundingClientRect().height > 0).length")
    assert open_lists == 0, "a dropdown list stayed open after the focus left it"
    for _ in range(30):
        if page.evaluate("() => document.activeElement.closest('#mfp-run') !== null"):
            break
        page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached Analyze")
    page.keyboard.press("Enter")
    assert wait_answer(page).startswith(("Answer:", "No diagnosis"))
    open_details(page)
    assert low_contrast(page) == [], low_contrast(page)
    page.get_by_role("tab", name="Batch").click()
    assert low_contrast(page) == [], low_contrast(page)


# Layout measured mid-run, so it depends on what the progress says at that moment (it passed alone and failed in two
# of three full CI runs before a 6 px gap was added): run deliberately with `-m slow`.
@pytest.mark.slow
def test_phone_width_without_overlaps(browser, server, tmp_path):
    pg = browser.new_page(viewport={"width": 390, "height": 844})
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server[0])
        pg.wait_for_selector("text=Example scans")
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 392  # nothing sideways
        upload(pg, make_dicom(tmp_path / "multi.dcm", frames=4))
        pg.wait_for_selector("#mfp-scan-info >> text=Loaded scan-")
        label = pg.locator("#mfp-frame label").bounding_box()
        icons = pg.locator("#mfp-frame .tab-like-container").bounding_box()
        assert label["x"] + label["width"] <= icons["x"] + 1, "the slider's label runs under its icons"
        choose_attack(pg, "Adaptive (attacks the defence too; slow)")
        pg.click("#mfp-run")
        pg.wait_for_selector("#mfp-verdict >> text=/attack: step [1-9] of/")
        assert in_view(pg, "#mfp-verdict .progress-level")  # the page scrolled to the answer box
        boxes = [pg.locator(f"#mfp-verdict {sel}").bounding_box() for sel in (".progress-level-inner",
                                                                               ".progress-bar-wrap", ".progress-text")]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
                assert overlap <= 1, f"progress texts overlap ({i}, {j})"
        shot(pg, tmp_path, "phone-progress")
        assert wait_answer(pg).startswith(("Answer:", "No diagnosis"))
        shot(pg, tmp_path, "phone-answer")
    finally:
        pg.close()


def test_batch_table_readable_at_1400_with_a_volume(page, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    bad = tmp_path / f"{SECRET_NAME}_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    dcm = make_dicom(tmp_path / f"{SECRET_NAME}_slice.dcm", frames=1)
    volume = make_nifti(tmp_path / f"{SECRET_NAME}.nii.gz")
    page.locator("#mfp-batch-files input[type=file]").set_input_files([str(EXAMPLES / "y1349.jpg"), str(bad),
                                                                       str(dcm), str(volume)])
    page.wait_for_selector("#mfp-batch-status >> text=4 file(s) loaded")
    assert "file 2: cannot be read" in text(page, "#mfp-batch-status")
    page.locator("#mfp-batch-plane").get_by_text("coronal", exact=True).click()
    page.fill("#mfp-batch-slices input, #mfp-batch-slices textarea", "20, 30")
    page.click("#mfp-batch-run")
    page.wait_for_selector("#mfp-batch-status >> text=4 analyzed, 1 error")
    table = page.locator("#mfp-batch-table")
    cell = table.get_by_text(re.compile(r"^error: ")).first
    box = cell.bounding_box()
    assert box is not None and box["x"] + 40 < 1400, "the error column is off-screen at 1400 px"
    assert table.get_by_text(re.compile(r"^scan-[0-9a-f]{8}$")).count() >= 4
    places = set(table.get_by_text(re.compile(r"^coronal \d+ of 56$")).all_inner_texts()) - {""}  # "": hidden copies
    assert places == {"coronal 20 of 56", "coronal 30 of 56"}
    assert table.locator("img").count() >= 4  # a small picture per analyzed row
    shot(page, tmp_path, "batch")
    fits = page.evaluate("""() => { const t = document.querySelector('#mfp-batch-table');
        const wide = [t, ...t.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 2 &&
                      ['auto', 'scroll'].includes(getComputedStyle(e).overflowX));
        const cut = [...t.querySelectorAll('th .header')].filter(e => e.scrollWidth > e.clientWidth + 1)
                      .map(e => e.innerText);
        return {scrolls: wide.map(e => e.tagName + '.' + e.className + ' ' + e.scrollWidth + '>' + e.clientWidth),
                cut: cut}; }""")
    assert fits["cut"] == [], f"headers cut at 1400 px: {fits['cut']}"
    assert fits["scrolls"] == [], f"the batch table scrolls sideways at 1400 px: {fits['scrolls']}"
    assert set(table.get_by_role("cell").all_inner_texts()) & {"True", "False"} == set()  # yes / no, as the CSV
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
