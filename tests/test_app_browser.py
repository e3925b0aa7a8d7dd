"""The app as a browser sees it: `python app.py` in a subprocess, then a real headless Chromium screenshot.

Skipped (with the reason) when no `chromium` binary is installed; CI installs the Debian package.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app import REPO_ROOT, free_port, model_source  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")
# The flags that give a drawn page here (see docs/ENVIRONMENT.md): without --virtual-time-budget the shot is blank.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=8000", "--window-size=1400,1000"]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with code {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"app.py did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    cmd = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    model = model_source(tmp)
    if model is not None:
        cmd += ["--model", model]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("MEDFEDPURE_MODEL", None)
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_page_renders_in_chromium(app_url, tmp_path):
    shot = tmp_path / "page.png"
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                              app_url], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium exit {run.returncode}: {run.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (1000, 1400, 3)
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    # A blank (undrawn) page is one flat colour; the rendered app has text, a banner, buttons and icons.
    assert img.std() > 15, f"screenshot looks blank (pixel std {img.std():.1f})"
    assert colours > 500, f"screenshot has only {colours} distinct colours"
    # the disclaimer banner's amber border/background is drawn near the top
    top = img[:250].reshape(-1, 3).astype(int)
    amber = (top[:, 0] > 230) & (top[:, 1] > 150) & (top[:, 1] < 235) & (top[:, 2] < 120)
    assert amber.sum() > 200, "the research-use disclaimer banner is not visible at the top of the page"
