"""Benchmark the demo app as users see it: start-up, one full analysis, and 8 concurrent users.

    python benchmarks/bench_app.py [--model SOURCE] [--starts 3] [--analyses 5] [--no-mixed] [--users 8]
                                   [--per-user 5] [--threads N] [--json FILE]

1. start-up: wall time from launching `python app.py` to the first HTTP 200 on "/" (median of --starts; the
   issue's bar: within 4 s on an idle machine of this kind), and to the models being ready;
2. one full analysis through gradio_client "/analyze": PGD attack (eps 8/255, 10 steps), detect, purify (purify
   always), classify, every figure and the PNG/PDF/JSON report (median of --analyses after one warm-up call),
   plus the median per-stage times the app reports, the figures' share (render + report) and everything the app
   adds beyond the models (its total minus the model stages);
3. mixed load (--no-mixed: skip): two adaptive analyses at the page's defaults sent at once and a PGD analysis
   (the same as in 2) sent a second later: each adaptive one's time against the app's budget, and the PGD
   one's time against its own median from 2 (the issue's bar: within the budget; at most 2x);
4. --users concurrent gradio_client users (0: skip), each doing --per-user analyses of the same kind: errors,
   latency median / p90, throughput, and the app process's peak RSS (psutil if installed, else
   /proc/<pid>/status VmRSS, summed over its child processes), sampled every 0.1 s throughout.
Model: --model, else the bundled pretrained/ when its weights are there, else an untrained tiny checkpoint built
into a temp folder (plumbing numbers only). Prints the machine and its load; --json FILE also writes every number.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "assets" / "examples" / "y1431.jpg"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["ram_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    import gradio

    info["gradio"] = gradio.__version__
    return info


def resolve_model(model: str | None, tmp: Path) -> str | None:
    if model:
        return model
    if (REPO_ROOT / "pretrained" / "classifier" / "model.safetensors").is_file():
        return None
    spec = importlib.util.spec_from_file_location("mtc", REPO_ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO_ROOT))
    spec.loader.exec_module(module)
    return str(module.make_tiny_checkpoint(tmp / "tiny"))


# ------------------------------------------------------------------------------------------------ memory
def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return out


def rss_bytes(pid: int) -> int:
    """RSS of pid plus its descendants."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process may just have ended
        return 0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo += _children(p)
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.samples = pid, every, 0, 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# ------------------------------------------------------------------------------------------------ app process
class AppProcess:
    def __init__(self, model: str | None, tmp: Path, threads: int = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port)]
        if model:
            cmd += ["--model", model]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
        self.log = open(tmp / f"app-{self.port}.log", "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> float:
        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                self.log.flush()
                tail = Path(self.log.name).read_text()[-3000:]
                raise RuntimeError(f"app.py exited with code {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.t0
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"app.py not ready within {timeout} s")

    def wait_models(self, timeout: float = 600.0) -> float | None:
        """Seconds from launch to the app's "ready" log line (the page is served before the models load)."""
        import re

        while time.perf_counter() - self.t0 < timeout:
            self.log.flush()
            m = re.search(r"ready ([0-9.]+) s after start", Path(self.log.name).read_text())
            if m:
                return float(m.group(1))
            if self.proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# ------------------------------------------------------------------------------------------------ analyses
MODEL_STAGES = ("classify_clean", "attack", "classify", "ood", "detect", "purify", "classify_purified")


def analysis_args(args):
    from gradio_client import handle_file

    # scan, hospital, attack, eps, steps, defence, purify_always, seed, frame (0 = default), eot, make_report
    # (plane, for a NIfTI volume, is left out)
    return (handle_file(str(EXAMPLE)), args.hospital, args.attack, 8 / 255, args.steps, True, True, 0, 0, 1, True)


def one_analysis(client, args) -> tuple[float, dict]:
    from medfedpure.app_render import AnalyzeOutputs

    t = time.perf_counter()
    out = AnalyzeOutputs(*client.predict(*analysis_args(args), api_name="/analyze"))
    return time.perf_counter() - t, out.details


def mixed_load(client, url: str, args, pgd_alone_s: float) -> dict:
    """Two adaptive analyses at the page's defaults at once, and the usual analysis a second later."""
    from gradio_client import Client, handle_file

    from medfedpure.app_render import AnalyzeOutputs

    heavy = [Client(url, verbose=False) for _ in range(2)]
    t0 = time.perf_counter()
    jobs = [c.submit(handle_file(str(EXAMPLE)), args.hospital, "adaptive", 8 / 255, make_report=False,
                     api_name="/analyze") for c in heavy]
    time.sleep(1.0)
    light_s, _ = one_analysis(client, args)
    out = {"pgd_alone_s": pgd_alone_s, "pgd_meanwhile_s": light_s, "pgd_ratio": light_s / pgd_alone_s,
           "adaptive": []}
    for job in jobs:
        try:
            details = AnalyzeOutputs(*job.result(timeout=600)).details
            out["adaptive"].append({"ok": True, "wall_s": time.perf_counter() - t0,
                                    "total_ms": details["timings_ms"]["total"], "steps": details["attack"]["steps"],
                                    "eot": details["attack"]["eot"],
                                    "budget_s": (details.get("limits") or {}).get("time_budget_s")})
        except Exception as exc:  # noqa: BLE001 - e.g. the time budget ran out: reported, not fatal
            out["adaptive"].append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]})
    for c in heavy:
        c.close()
    runs = ", ".join(f"{a['total_ms'] / 1000:.1f} s of {a['budget_s']:g} s ({a['steps']} steps x {a['eot']})"
                     if a["ok"] else a["error"] for a in out["adaptive"])
    print(f"mixed: two adaptive analyses at the defaults: {runs}; {args.attack} meanwhile {light_s:.2f} s = "
          f"{out['pgd_ratio']:.2f}x its {pgd_alone_s:.2f} s alone", flush=True)
    return out


class _SkipUsers(Exception):
    pass


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint folder or Hub repo id (default: bundled, else a tiny untrained one)")
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--analyses", type=int, default=5)
    p.add_argument("--no-mixed", dest="mixed", action="store_false",
                   help="skip the mixed load (two adaptive analyses and a PGD one meanwhile)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--per-user", type=int, default=5)
    p.add_argument("--attack", default="pgd")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hospital", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="app.py --threads (default: the app's own choice)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    from gradio_client import Client

    results = {"machine": machine_info()}
    print("machine:", json.dumps(results["machine"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp_name:
        tmp = Path(tmp_name)
        model = resolve_model(args.model, tmp)
        results["model"] = model or "bundled pretrained/"
        print(f"model: {results['model']}" + ("  (UNTRAINED tiny checkpoint: plumbing numbers only)"
                                              if model and "tiny" in Path(model).name else ""), flush=True)
        # 1. start-up
        starts, readies, app = [], [], None
        for i in range(max(1, args.starts)):
            app = AppProcess(model, tmp, args.threads)
            starts.append(app.wait_ready())
            readies.append(app.wait_models())
            print(f"start-up {i + 1}: page served {starts[-1]:.2f} s, models ready {readies[-1]} s", flush=True)
            if i < args.starts - 1:
                app.stop()
        ready_ok = [r for r in readies if r is not None]
        results["startup_s"] = {"runs": starts, "median": statistics.median(starts), "models_ready_runs": readies,
                                "models_ready_median": statistics.median(ready_ok) if ready_ok else None}
        try:
            # 2. one full analysis
            client = Client(app.url, verbose=False)
            warm, _ = one_analysis(client, args)
            times, stages = [], []
            for _ in range(max(1, args.analyses)):
                t, details = one_analysis(client, args)
                times.append(t)
                stages.append(details["timings_ms"])
            stage_median = {k: round(statistics.median(s[k] for s in stages if k in s), 1) for k in stages[0]}
            figures = [s.get("render", 0) + s.get("report", 0) for s in stages]
            beyond = [s["total"] - sum(s.get(k, 0) for k in MODEL_STAGES) for s in stages]
            results["analysis_s"] = {"warmup": warm, "runs": times, "median": statistics.median(times),
                                     "stage_ms_median": stage_median, "device": stages and details["device"],
                                     "figures_ms_median": statistics.median(figures),
                                     "beyond_models_ms_median": statistics.median(beyond)}
            print(f"analysis ({args.attack}, {args.steps} steps, purify always, report): median "
                  f"{statistics.median(times):.2f} s of {[round(t, 2) for t in times]} (warm-up {warm:.2f} s)")
            print(f"  stage medians (ms, device {details['device']}): {stage_median}")
            print(f"  figures (render + report) median {statistics.median(figures):.0f} ms; everything the app "
                  f"adds beyond the models median {statistics.median(beyond):.0f} ms", flush=True)
            if args.mixed:
                results["mixed"] = mixed_load(client, app.url, args, statistics.median(times))
            client.close()
            if args.users <= 0:
                raise _SkipUsers
            # 3. concurrent users
            sampler = RssSampler(app.proc.pid)
            rss_before = rss_bytes(app.proc.pid)
            sampler.start()
            latencies, errors = [], []
            lock = threading.Lock()

            def user(k: int):
                c = Client(app.url, verbose=False)
                try:
                    for _ in range(args.per_user):
                        try:
                            t, _ = one_analysis(c, args)
                            with lock:
                                latencies.append(t)
                        except Exception as exc:  # noqa: BLE001 - counted, not fatal
                            with lock:
                                errors.append(f"user {k}: {type(exc).__name__}: {exc}"[:300])
                finally:
                    c.close()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.users) as pool:
                list(pool.map(user, range(args.users)))
            wall = time.perf_counter() - t0
            peak = sampler.stop()
            total = args.users * args.per_user
            results["concurrent"] = {
                "users": args.users, "per_user": args.per_user, "requests": total, "errors": len(errors),
                "error_samples": errors[:5], "wall_s": wall, "throughput_per_s": len(latencies) / wall,
                "latency_median_s": statistics.median(latencies) if latencies else None,
                "latency_p90_s": pct(latencies, 90), "rss_before_mib": rss_before / 2**20,
                "rss_peak_mib": peak / 2**20, "rss_samples": sampler.samples}
            c = results["concurrent"]
            print(f"concurrent: {args.users} users x {args.per_user} = {total} analyses in {wall:.1f} s, "
                  f"{len(errors)} errors, latency median {c['latency_median_s']:.2f} s / p90 "
                  f"{c['latency_p90_s']:.2f} s,"
                  f" {c['throughput_per_s']:.2f} analyses/s; app RSS {c['rss_before_mib']:.0f} MiB before, peak "
                  f"{c['rss_peak_mib']:.0f} MiB ({sampler.samples} samples)", flush=True)
            for e in errors[:5]:
                print("  error:", e)
        except _SkipUsers:
            pass
        finally:
            app.stop()
    try:
        results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    print(f"start-up median: page served {results['startup_s']['median']:.2f} s of {[round(s, 2) for s in starts]} "
          f"(bar: 4 s on an idle machine; load average now {results['machine'].get('load_average_1m_after')}); "
          f"models ready {results['startup_s']['models_ready_median']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if not results.get("concurrent", {}).get("errors") else 1


if __name__ == "__main__":
    raise SystemExit(main())
