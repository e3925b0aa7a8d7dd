"""Per-request time budget, Stop button and per-step progress for the demo app, without touching the library.

The pipeline and the attacks are plain PyTorch loops with no callback. The app learns where they are by counting
forward calls of the models they use, through forward pre-hooks installed once on the pipeline's modules:

- the hospital classifiers (one call per FGSM/PGD step: torchattacks evaluates the model once per step);
- the masked autoencoder (one call per adaptive-attack step, as `AdaptivePGD.direction` scores the iterate once,
  plus one for its final check);
- the purifier's UNet (one call per DDIM step).

Each hook looks up the tracker of the *current thread* (Gradio runs every request in a worker thread of its
own), so concurrent requests never see each other's counts; calls from a thread without a tracker (training,
tests, the CLI) cost one attribute lookup. Every hook call also checks the request's deadline and Stop flag and
raises `Stopped` there: a long attack ends within one model call of the budget running out, and the worker
is free again (cancelling the Gradio event alone would leave the thread computing).

`Requests` runs each request of the app with its session, its cancel flag (set by the Stop button) and its
tracker, and turns the expected failures (a user error, a stopped request) into one log line and one message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

__all__ = ["Requests", "Stopped", "Tracker", "install_hooks", "tracking"]

_local = threading.local()


class Stopped(Exception):
    """A request ended early: reason 'budget' (its time budget ran out) or 'stop' (the user pressed Stop)."""

    def __init__(self, reason: str, where: str, elapsed_s: float, budget_s: float):
        self.reason, self.where, self.elapsed_s, self.budget_s = reason, where, elapsed_s, budget_s
        super().__init__(self.message())

    def message(self) -> str:
        where = f" during {self.where}" if self.where else ""
        if self.reason == "stop":
            return f"Stopped at your request after {self.elapsed_s:.1f} s{where}. Nothing is shown for an " \
                   "unfinished analysis."
        return (f"Stopped: this server's time budget of {self.budget_s:g} s per analysis ran out{where}. "
                "Nothing is shown for an unfinished analysis; try fewer steps or EOT samples.")


class Tracker:
    """The progress of one request: stages, each counting calls of one model ('classifier', 'mae' or 'unet').

    progress: a callable like gradio's `gr.Progress` (progress((done, total), desc=...)), or None.
    cancel: a threading.Event the Stop button sets. budget_s: seconds from creation; None or <= 0: no limit.
    """

    def __init__(self, budget_s: float | None = None, cancel: threading.Event | None = None, progress=None,
                 clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.budget_s = float(budget_s) if budget_s and budget_s > 0 else None
        self.deadline = self.start + self.budget_s if self.budget_s else None
        self.cancel = cancel or threading.Event()
        self.progress = progress
        self.stage_name, self.counter, self.total, self.done = "", None, 0, 0
        self.label = ""
        self.calls = {"classifier": 0, "mae": 0, "unet": 0}
        self.log: list[tuple[str, int, int]] = []  # (stage, done, total) as reported, for tests

    def elapsed(self) -> float:
        return self.clock() - self.start

    def check(self) -> None:
        """Raise Stopped when the user pressed Stop or the budget ran out."""
        where = self.where()
        if self.cancel.is_set():
            raise Stopped("stop", where, self.elapsed(), self.budget_s or 0.0)
        if self.deadline is not None and self.clock() > self.deadline:
            raise Stopped("budget", where, self.elapsed(), self.budget_s or 0.0)

    def where(self) -> str:
        if not self.stage_name:
            return ""
        if self.total > 1:
            return f"{self.stage_name} ({self.label} {min(self.done + 1, self.total)} of {self.total})"
        return self.stage_name

    def stage(self, name: str, total: int = 0, counter: str | None = None, label: str = "step") -> None:
        """Start a stage of `total` counted calls of model `counter` (None: an uncounted stage)."""
        self.check()
        self.stage_name, self.total, self.counter, self.done, self.label = name, int(total), counter, 0, label
        self._report()

    def tick(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.check()
        if kind == self.counter and self.done < self.total:
            self.done += 1
            self._report()

    def _report(self) -> None:
        self.log.append((self.stage_name, self.done, self.total))
        if self.progress is None:
            return
        desc = self.stage_name if self.total <= 1 else f"{self.stage_name}: {self.label} {self.done} of {self.total}"
        try:
            if self.total > 1:
                self.progress((self.done, self.total), desc=desc)
            else:
                self.progress(None, desc=desc)
        except Exception:  # noqa: BLE001 - progress is cosmetic; never fail a request over it
            pass


def current() -> Tracker | None:
    return getattr(_local, "tracker", None)


@contextmanager
def tracking(tracker: Tracker):
    """Make `tracker` the current thread's tracker for the duration of the block."""
    previous = current()
    _local.tracker = tracker
    try:
        yield tracker
    finally:
        _local.tracker = previous


def _hook(kind: str):
    def pre_hook(module, args):
        tracker = getattr(_local, "tracker", None)
        if tracker is not None:
            tracker.tick(kind)

    return pre_hook


def install_hooks(pipe) -> int:
    """Install the counting hooks on a MedFedPure pipeline once (idempotent) -> the number of modules hooked.

    Modules it cannot find (another pipeline layout) are skipped: progress is then coarser, nothing breaks.
    """
    done = getattr(pipe, "_app_progress_hooked", None)
    if done is not None:
        return done
    modules: list[tuple[str, object]] = []
    for h in list(getattr(pipe, "hospitals", []) or []):
        try:
            modules.append(("classifier", pipe.classifier_for(h)))
        except Exception:  # noqa: BLE001
            pass
    global_model = getattr(pipe, "_global_model", None)
    if global_model is not None:
        modules.append(("classifier", global_model))
    if getattr(pipe, "mae", None) is not None:
        modules.append(("mae", pipe.mae))
    unet = getattr(getattr(pipe, "purifier", None), "unet", None)
    if unet is not None:
        modules.append(("unet", unet))
    seen = set()
    for kind, module in modules:
        if id(module) in seen or not hasattr(module, "register_forward_pre_hook"):
            continue
        seen.add(id(module))
        module.register_forward_pre_hook(_hook(kind))
    pipe._app_progress_hooked = len(seen)
    return len(seen)


class Requests:
    """The app's requests: each runs with its session (`app_files.Sessions`), a cancel flag that `stop` sets and a
    `Tracker` (time budget, progress) that is the thread's current one.

    `run(where, session_hash, progress, work, on_error=None, kind="light", ticket=None)` answers one request with
    work(session, tracker, t0), after prepare(tracker) (waiting for the models). An error of `user_errors` or
    `Stopped` is logged as one line (no traceback, no file name: the messages name none), then raised as
    api_error(message) for an API call, or passed to on_error(stopped, message) for the page, whose return value
    is the answer: a stopped page request ends normally (no error badge), it only says so.

    Kinds of work: `slots` says how many requests of each kind run at once ({"light": 2, "heavy": 2}: a light
    request never waits behind heavy ones, it has slots of its own); a request waits for a slot of its kind
    (Stop ends the wait; its time budget starts when it gets one). Heavy work (`nice` > 0) runs in threads of
    its own at a lower CPU priority, so that a light request started meanwhile keeps its speed.
    ticket: the session's Stop count when the request was made (`Session.stops`); a request queued before a
    Stop ends at once when its turn comes. on_refused(): called when the request ends before its work started.
    """

    def __init__(self, sessions, budget_s: float | None, *, prepare=None, user_errors: tuple = (),
                 api_error=RuntimeError, log: logging.Logger | None = None, slots: dict | None = None,
                 nice: int = 10):
        self.sessions, self.budget_s = sessions, budget_s
        self.prepare = prepare or (lambda tracker: None)
        self.user_errors, self.api_error = tuple(user_errors), api_error
        self.log = log or logging.getLogger("medfedpure.app")
        self.slots = dict(slots or {"light": 2, "heavy": 2})
        self._free = {kind: threading.BoundedSemaphore(max(1, int(n))) for kind, n in self.slots.items()}
        self.running = {kind: 0 for kind in self.slots}
        self.nice = int(nice)
        self._pool = None
        self._lock = threading.Lock()

    def _wait_for_slot(self, kind: str, tracker: Tracker) -> None:
        free = self._free[kind]
        if free.acquire(blocking=False):
            return
        tracker.stage(f"waiting for a free slot: {self.slots[kind]} {kind} "
                      f"analys{'is is' if self.slots[kind] == 1 else 'es are'} running on this server")
        while not free.acquire(timeout=0.2):
            if tracker.cancel.is_set():
                raise Stopped("stop", "the wait for a free slot", tracker.elapsed(), self.budget_s or 0.0)

    def _heavy_pool(self):
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.slots.get("heavy", 1),
                                                thread_name_prefix="medfedpure-heavy",
                                                initializer=_lower_priority, initargs=(self.nice,))
            return self._pool

    def run(self, where: str, session_hash, progress, work, on_error=None, *, kind: str = "light",
            ticket: int | None = None, on_refused=None):
        import contextvars

        kind = kind if kind in self._free else next(iter(self._free))
        session = self.sessions.get(session_hash)
        cancel = threading.Event()
        session.cancels.add(cancel)
        got = False
        try:
            if ticket is not None and int(ticket) != session.stops:
                raise Stopped("stop", "", 0.0, self.budget_s or 0.0)
            try:
                self._wait_for_slot(kind, Tracker(None, cancel, progress))
            except Stopped:
                if on_refused is not None:  # never started: what it was sent is cleaned up all the same
                    on_refused()
                raise
            got = True
            with self._lock:
                self.running[kind] += 1

            def answer():
                with tracking(Tracker(self.budget_s, cancel, progress)) as tracker:
                    self.prepare(tracker)
                    return work(session, tracker, time.perf_counter())

            if kind == "heavy" and self.nice > 0:
                return self._heavy_pool().submit(contextvars.copy_context().run, answer).result()
            return answer()
        except (Stopped, *self.user_errors) as exc:
            stopped = isinstance(exc, Stopped)
            message = exc.message() if stopped else str(exc)
            self.log.info("%s: %s%s", where, "" if stopped and on_error else "user error: ", message)
            if on_error is None:
                raise self.api_error(message) from None
            return on_error(stopped, message)
        finally:
            session.cancels.discard(cancel)
            if got:
                with self._lock:
                    self.running[kind] -= 1
                self._free[kind].release()

    def stop(self, session_hash) -> int:
        """End every running request of a session at its next model call, and every one it has queued when its
        turn comes -> how many were running."""
        session = self.sessions.peek(session_hash)
        if session is None:
            return 0
        session.stops += 1
        running = list(session.cancels)
        for event in running:
            event.set()
        if running:
            self.log.info("stop: %d running request(s) of a session stopped", len(running))
        return len(running)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Run this (worker) thread at a lower CPU priority: Linux schedules threads one by one."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(0, int(nice)))
    except (AttributeError, OSError):  # not Linux, or not allowed: the same priority as the rest
        pass
