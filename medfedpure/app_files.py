"""Where the demo app keeps what users give it, and how it gets rid of it.

- **Uploads** are read into memory and deleted at once (`consume_upload`): Gradio writes every upload, under its
  original file name, into its temp folder; the app removes that file (and its folder) as soon as it has the
  bytes. Only a multi-frame file's bytes stay in memory (to show another frame), never on disk.
- **Reports** are written into one folder per request under one folder per browser session
  (`Sessions.outdir`). A session's folder and its in-memory scans are dropped when its page is closed
  (`Sessions.drop`, wired to Gradio's unload event), and every folder or session idle for longer than `keep_s`
  is removed by a background sweeper (`Sessions.start_sweeper`), so nothing outlives `keep_s` plus one sweep.
- **The whole temp tree** of a served app is private (`private_temp_dir`): `python app.py` points
  GRADIO_TEMP_DIR at a fresh folder of its own, so on SIGTERM/SIGHUP (`install_signal_handlers`; what Docker,
  systemd and Spaces send) and at exit it removes every file it or Gradio wrote, uploads included.

This module imports neither gradio nor torch (it is tested on its own, in a subprocess for the signals).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Loaded", "Session", "Sessions", "consume_upload", "session_hash", "install_signal_handlers", "private_temp_dir",
           "setup_logging", "remove_tree"]

log = logging.getLogger("medfedpure.app")


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """One line per event on stderr (no tracebacks for user errors: the app logs those itself as one line)."""
    if not any(getattr(h, "_medfedpure", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._medfedpure = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def session_hash(request) -> str | None:
    """The browser session of a Gradio request (None outside one)."""
    return getattr(request, "session_hash", None) if request is not None else None


def remove_tree(path: Path | str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _inside(path: Path, roots) -> bool:
    try:
        real = path.resolve()
    except OSError:
        return False
    for root in roots:
        try:
            real.relative_to(Path(root).resolve())
            return True
        except (ValueError, OSError):
            continue
    return False


def consume_upload(path, roots, keep=None) -> bytes:
    """Read an uploaded file into memory and delete it (and its folder, when that is now empty).

    Only files inside one of `roots` (the Gradio temp folder) are deleted: a path elsewhere (an example shipped
    with the app, a local file given to the Python API) is read and left alone, and so is a file for which
    `keep(path, data)` is true (Gradio's cached copy of an example, which it hands out again on the next click).
    Raises OSError when unreadable.
    """
    p = Path(str(path))
    data = p.read_bytes()
    if _inside(p, roots) and not (keep is not None and keep(p, data)):
        try:
            p.unlink()
        except OSError as exc:  # already gone (a second reader), or not ours to delete
            log.debug("could not delete an upload: %s", type(exc).__name__)
        try:
            p.parent.rmdir()  # Gradio puts each upload in a folder of its own; only removed when empty
        except OSError:
            pass
    return data


def private_temp_dir(base: str | Path | None = None) -> Path:
    """A fresh folder of this process's own for everything Gradio and the app write (uploads, copies, reports):
    under `base` (default: $GRADIO_TEMP_DIR, else the system temp folder)."""
    base = Path(base or os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"medfedpure-{os.getpid()}-", dir=base))


def install_signal_handlers(cleanup, signals=("SIGTERM", "SIGHUP"), exit_fn=os._exit) -> list[str]:
    """On each of `signals`: log one line, run `cleanup()`, then end the process (exit status 0).

    exit_fn defaults to os._exit: the server's threads are not waited for (a request still computing would keep
    a graceful exit waiting for minutes), and nothing is written after the cleanup. Must be called from the main
    thread. Returns the names of the signals handled.
    """
    installed = []

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        log.info("%s received: removing temporary files and stopping", name)
        try:
            cleanup()
        except Exception as exc:  # noqa: BLE001 - never stay alive because a cleanup step failed
            log.error("cleanup failed: %s", type(exc).__name__)
        finally:
            for h in log.handlers:  # os._exit skips logging's own shutdown
                try:
                    h.flush()
                except Exception:  # noqa: BLE001
                    pass
            exit_fn(0)

    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, handler)
            installed.append(name)
    return installed


# ------------------------------------------------------------------------------------------------ sessions
@dataclass
class Loaded:
    """A scan held in memory: the frame read at 128 px, and for multi-frame files the bytes to read others."""

    scan: object  # medfedpure.io.Scan
    frames: int = 1
    data: bytes | None = None

    @property
    def image(self):
        return self.scan.image


@dataclass
class Session:
    key: str
    last_used: float = field(default_factory=time.time)
    scan: Loaded | None = None
    batch: list = field(default_factory=list)  # [(row, Loaded | None, error message | None)]
    cancels: set = field(default_factory=set)  # threading.Event of each running request
    stops: int = 0  # how many times Stop was pressed (a request made before the last Stop ends when it starts)
    waiting: int = 0  # page requests begun and not yet answered (queued or running)


class Sessions:
    """Per-session state and report folders, with a bounded lifetime (see the module docstring)."""

    def __init__(self, workdir: Path | str, keep_s: float = 1800.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_s = float(keep_s)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.closing = False

    @classmethod
    def started(cls, workdir: Path | str | None = None, keep_s: float = 1800.0, *,
                root: Path | str | None = None) -> "Sessions":
        """Sessions in `workdir` (default: a fresh folder inside `root`), removed at exit, swept in the background."""
        if workdir is None:
            root = Path(root or tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            workdir = tempfile.mkdtemp(prefix="medfedpure-app-", dir=root)
        sessions = cls(workdir, keep_s)
        sessions.register_atexit()
        sessions.start_sweeper()
        return sessions

    @staticmethod
    def key_for(session_hash: str | None) -> str:
        """A folder name for a session (a hash: the session id itself never becomes a path)."""
        return hashlib.sha256((session_hash or "no-session").encode()).hexdigest()[:16]

    def get(self, session_hash: str | None) -> Session:
        key = self.key_for(session_hash)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = Session(key)
            session.last_used = time.time()
            return session

    def peek(self, session_hash: str | None) -> Session | None:
        with self._lock:
            return self._sessions.get(self.key_for(session_hash))

    def __len__(self) -> int:
        return len(self._sessions)

    def outdir(self, session_hash: str | None) -> Path:
        """A new, empty folder for one request's files."""
        if self.closing:
            raise RuntimeError("the app is shutting down")
        session = self.get(session_hash)
        out = self.workdir / session.key / uuid.uuid4().hex[:12]
        out.mkdir(parents=True)
        return out

    def drop(self, session_hash: str | None) -> None:
        """The session ended (its page was closed): forget its scans and delete its folder."""
        key = self.key_for(session_hash)
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            for event in list(session.cancels):
                event.set()
        remove_tree(self.workdir / key)

    def sweep(self, now: float | None = None) -> int:
        """Remove request folders older than keep_s and sessions idle for longer -> how many things went."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            idle = [k for k, s in self._sessions.items() if now - s.last_used > self.keep_s and not s.cancels]
            for k in idle:
                del self._sessions[k]
        removed += len(idle)
        for k in idle:
            remove_tree(self.workdir / k)
        try:
            session_dirs = list(self.workdir.iterdir())
        except OSError:
            return removed
        for sdir in session_dirs:
            try:
                children = list(sdir.iterdir()) if sdir.is_dir() else []
            except OSError:
                continue
            for req in children:
                try:
                    if now - req.stat().st_mtime > self.keep_s:
                        remove_tree(req)
                        removed += 1
                except OSError:
                    continue
            try:
                if sdir.is_dir() and not any(sdir.iterdir()) and now - sdir.stat().st_mtime > self.keep_s:
                    sdir.rmdir()
            except OSError:
                pass
        return removed

    def start_sweeper(self, every_s: float | None = None) -> threading.Thread:
        every = float(every_s) if every_s else max(1.0, min(60.0, self.keep_s / 4))
        if self._sweeper is not None and self._sweeper.is_alive():
            return self._sweeper

        def loop():
            while not self._stop.wait(every):
                try:
                    n = self.sweep()
                    if n:
                        log.info("removed %d expired report folder(s) or session(s)", n)
                except Exception as exc:  # noqa: BLE001 - the sweeper must keep running
                    log.error("sweep failed: %s", type(exc).__name__)

        self._sweeper = threading.Thread(target=loop, name="medfedpure-sweeper", daemon=True)
        self._sweeper.start()
        return self._sweeper

    def close(self, remove: bool = True) -> None:
        """Stop the sweeper, cancel running requests, and (by default) delete every session's files."""
        self.closing = True
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            for event in list(s.cancels):
                event.set()
        if remove:
            remove_tree(self.workdir)

    def register_atexit(self) -> None:
        atexit.register(self.close)
