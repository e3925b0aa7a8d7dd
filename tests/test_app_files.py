"""How long what users give the app lives: uploads, report folders, sessions, the private temp tree (SIGTERM).

medfedpure.app_files imports neither gradio nor torch, so these run in milliseconds; the SIGTERM handler runs in a
subprocess that signals itself. The served app's own SIGTERM check is in test_app_browser.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from medfedpure.app_files import Sessions, consume_upload, install_signal_handlers, private_temp_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_an_upload_is_deleted_once_read_and_nothing_else_is(tmp_path):
    root = tmp_path / "gradio"
    upload = root / "f00d" / "Doe_Jane_MRN-123456.dcm"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"pixels")
    assert consume_upload(upload, [root]) == b"pixels"
    assert not upload.exists() and not upload.parent.exists()  # its folder too, now empty
    outside = tmp_path / "examples" / "y1.jpg"  # not in the temp folder: read and left alone
    outside.parent.mkdir()
    outside.write_bytes(b"example")
    assert consume_upload(outside, [root]) == b"example" and outside.exists()
    kept = root / "beef" / "y1.jpg"  # Gradio's copy of an example: the caller says keep it
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"example")
    assert consume_upload(kept, [root], keep=lambda p, data: data == b"example") == b"example" and kept.exists()
    shared = root / "cafe"  # a folder holding something else stays
    shared.mkdir()
    (shared / "other").write_bytes(b"x")
    (shared / "up.png").write_bytes(b"y")
    consume_upload(shared / "up.png", [root])
    assert shared.is_dir() and not (shared / "up.png").exists()
    link = tmp_path / "escape"  # a path that resolves outside the root is not deleted
    link.write_bytes(b"z")
    (root / "lnk").symlink_to(link)
    consume_upload(root / "lnk", [root])
    assert link.exists()


def test_sessions_folders_end_with_the_session_or_after_keep_s(tmp_path):
    sessions = Sessions(tmp_path / "work", keep_s=60)
    a, b = sessions.outdir("A"), sessions.outdir("B")
    (a / "report.pdf").write_bytes(b"%PDF")
    (b / "report.pdf").write_bytes(b"%PDF")
    assert a.parent.name == Sessions.key_for("A") and "A" not in a.parent.name  # the session id is hashed
    sessions.drop("A")  # the page was closed
    assert not a.parent.exists() and b.exists() and sessions.peek("A") is None and sessions.peek("B") is not None
    assert sessions.sweep() == 0 and b.exists()
    old = time.time() - 120
    os.utime(b, (old, old))
    sessions.get("B")  # still in use: only its old request folder goes
    assert sessions.sweep() == 1 and not b.exists() and sessions.peek("B") is not None
    assert sessions.sweep(now=time.time() + 61) == 1 and sessions.peek("B") is None  # idle: the session too
    running = sessions.get("C")
    running.cancels.add(threading.Event())  # a request still running is not swept away
    assert sessions.sweep(now=time.time() + 3600) == 0 and sessions.peek("C") is not None
    sessions.close()
    assert not (tmp_path / "work").exists() and sessions.closing
    assert all(e.is_set() for e in running.cancels)  # close stops running requests


def test_the_sweeper_runs_in_the_background(tmp_path):
    sessions = Sessions(tmp_path / "work", keep_s=0.2)
    folder = sessions.outdir("A")
    sessions.start_sweeper(every_s=0.05)
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists()
    sessions.close()


def test_private_temp_dir_is_fresh_and_private(tmp_path):
    a, b = private_temp_dir(tmp_path), private_temp_dir(tmp_path)
    assert a != b and a.parent == tmp_path and (a.stat().st_mode & 0o777) == 0o700


def test_sigterm_removes_the_private_temp_tree_then_exits(tmp_path):
    script = tmp_path / "served.py"
    script.write_text(textwrap.dedent(f"""
        import os, shutil, signal, sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from medfedpure.app_files import install_signal_handlers, private_temp_dir, setup_logging
        setup_logging()
        private = private_temp_dir({str(tmp_path / "gradio")!r})
        (private / "f00d").mkdir()
        (private / "f00d" / "Doe_Jane_MRN-123456.dcm").write_bytes(b"tags")
        (private / "reports" / "s1").mkdir(parents=True)
        (private / "reports" / "s1" / "medfedpure-scan-1.pdf").write_bytes(b"%PDF")
        print(private, flush=True)
        install_signal_handlers(lambda: shutil.rmtree(private))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # never reached: the handler exits
        sys.exit(3)
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    private = Path(run.stdout.strip())
    assert private.parent == tmp_path / "gradio" and not private.exists()
    assert "SIGTERM received: removing temporary files and stopping" in run.stderr
    assert "Doe" not in run.stderr and "Traceback" not in run.stderr


def test_signal_handler_exits_even_if_cleanup_fails():
    calls = []

    def boom():
        calls.append("cleanup")
        raise OSError("disk gone")

    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert install_signal_handlers(boom, signals=("SIGHUP",), exit_fn=lambda code: calls.append(code)) == ["SIGHUP"]
        signal.raise_signal(signal.SIGHUP)
        assert calls == ["cleanup", 0]
    finally:
        signal.signal(signal.SIGHUP, previous)
