"""The GPU path, ready to prove: CPU/GPU agreement, GPU latency and the app's start-up on a CUDA machine.

    python benchmarks/bench_gpu.py [--model SOURCE] [--repeats 20] [--batches 1,64] [--no-app] [--json FILE]

On a machine with CUDA it
1. loads the bundled checkpoints (or --model) twice, on the GPU and on the CPU, analyzes the example scans
   (assets/examples) on both, with purification forced on so every stage runs, and asserts that they agree:
   class probabilities before and after the defence within --atol (default 1e-3, absolute; both devices run
   float32), detector scores within 1e-3 relative, the same flag and the same t* (purification noise is drawn
   on the CPU from the same seed on both devices). With --fp16 it also runs the GPU under float16 autocast and
   checks the probabilities within --atol-fp16 (default 2e-2, the tolerance stated for half precision);
2. prints the GPU latency of one analysis at each batch size of --batches: unflagged (detect + classify,
   purify="never") and purified (detect + DDIM purification + classify, purify="always"): the median of
   --repeats timed runs after --warmup untimed ones, each run bracketed by torch.cuda.synchronize();
3. unless --no-app: starts `python app.py` (bundled checkpoints), and reports the time to the first HTTP 200 on
   "/" (page served), to its "ready" log line (models loaded) and one PGD analysis through gradio_client.
On a machine without CUDA it says so and exits 0: GPU figures stay unmeasured. --cpu-dry-run runs the same
steps with the CPU standing in for the GPU (checks this script, proves nothing about a GPU).
Exit status 1 when the devices disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "assets" / "examples"
sys.path.insert(0, str(REPO_ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine(torch, device: str) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def load_examples():
    from medfedpure.io import read_scan

    paths = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".dcm"))
    return [p.name for p in paths], [read_scan(p, size=128).image for p in paths]


def agreement(torch, gpu_pipe, cpu_pipe, images, atol: float, fp16: bool, atol_fp16: float) -> dict:
    import numpy as np

    x = torch.from_numpy(np.stack(images))[:, None]
    out = {"scans": len(images), "atol": atol, "checks": []}
    runs = [("float32", gpu_pipe.analyze(x, hospital=gpu_pipe.hospitals[0], purify="always", seed=0), atol)]
    if fp16:
        with torch.autocast("cuda", dtype=torch.float16):
            runs.append(("float16 autocast", gpu_pipe.analyze(x, hospital=gpu_pipe.hospitals[0], purify="always",
                                                              seed=0), atol_fp16))
    ref = cpu_pipe.analyze(x, hospital=cpu_pipe.hospitals[0], purify="always", seed=0)
    ok = True
    for label, res, tol in runs:
        worst = {"probabilities": 0.0, "final_probabilities": 0.0, "score_rel": 0.0}
        same_flag = same_t = True
        for g, c in zip(res, ref):
            for key in ("probabilities", "final_probabilities"):
                worst[key] = max(worst[key], float(np.max(np.abs(np.subtract(getattr(g, key), getattr(c, key))))))
            worst["score_rel"] = max(worst["score_rel"], abs(g.score - c.score) / max(abs(c.score), 1e-12))
            same_flag &= g.flagged == c.flagged
            same_t &= g.t_star == c.t_star
        passed = (worst["probabilities"] <= tol and worst["final_probabilities"] <= tol
                  and (label != "float32" or (worst["score_rel"] <= 1e-3 and same_flag and same_t)))
        ok &= passed
        out["checks"].append({"precision": label, "tolerance": tol, "max_abs_diff": worst, "same_flag": same_flag,
                              "same_t_star": same_t, "passed": passed})
        print(f"  {label}: max |p_gpu - p_cpu| before {worst['probabilities']:.2e}, after "
              f"{worst['final_probabilities']:.2e} (tolerance {tol:g}); score rel diff {worst['score_rel']:.2e}; "
              f"same flag {same_flag}, same t* {same_t}: {'PASS' if passed else 'FAIL'}", flush=True)
    out["passed"] = ok
    return out


def latency(torch, pipe, images, batches, repeats: int, warmup: int) -> dict:
    import numpy as np

    cuda = str(pipe.device).startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    out = {}
    for n in batches:
        x = torch.from_numpy(np.stack([images[i % len(images)] for i in range(n)]))[:, None].to(pipe.device)
        for mode, purify in (("unflagged", "never"), ("purified", "always")):
            times = []
            for i in range(warmup + repeats):
                sync()
                t = time.perf_counter()
                pipe.analyze(x, hospital=pipe.hospitals[0], purify=purify, seed=i)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1000)
            med = statistics.median(times)
            out[f"{mode}_batch{n}_ms"] = {"median": round(med, 2), "per_scan": round(med / n, 3),
                                          "runs": len(times)}
            print(f"  {mode:9s} batch {n:3d}: median {med:8.2f} ms per batch, {med / n:7.3f} ms per scan "
                  f"({len(times)} runs after {warmup} warm-up)", flush=True)
    return out


def app_startup(timeout: float = 300.0) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-app-") as tmp:
        log_path = Path(tmp) / "app.log"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(Path(tmp) / "gradio")}
        env.pop("MEDFEDPURE_MODEL", None)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port",
                                     str(port)], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        out = {}
        try:
            while time.perf_counter() - t0 < timeout and "served_s" not in out:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited: {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            out["served_s"] = round(time.perf_counter() - t0, 2)
                except OSError:
                    time.sleep(0.05)
            while time.perf_counter() - t0 < timeout and "ready_s" not in out:
                m = re.search(r"ready ([0-9.]+) s after start: .*device (\S+);", log_path.read_text())
                if m:
                    out["ready_s"], out["device"] = float(m.group(1)), m.group(2)
                time.sleep(0.1)
            from gradio_client import Client, handle_file

            from medfedpure.app_render import AnalyzeOutputs

            client = Client(url, verbose=False)
            args = (handle_file(str(EXAMPLES / "y1431.jpg")), 0, "pgd", 8 / 255, 10, True, True, 0, 0, 1, True)
            client.predict(*args, api_name="/analyze")  # warm-up
            t = time.perf_counter()
            res = AnalyzeOutputs(*client.predict(*args, api_name="/analyze"))
            out["analysis_pgd10_purify_report_s"] = round(time.perf_counter() - t, 3)
            out["analysis_stage_ms"] = res.details["timings_ms"]
            client.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print(f"  app: page served {out.get('served_s')} s, models ready {out.get('ready_s')} s after start "
          f"(device {out.get('device')}); one PGD-10 + purify + report analysis "
          f"{out.get('analysis_pgd10_purify_report_s')} s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint folder or Hub repo id (default: the bundled pretrained/)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--fp16", action="store_true", help="also check float16 autocast on the GPU")
    p.add_argument("--atol-fp16", type=float, default=2e-2)
    p.add_argument("--no-app", action="store_true", help="skip the app start-up measurement")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="use the CPU in place of the GPU (checks the script; measures nothing about a GPU)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print(f"no CUDA device here (torch {torch.__version__}, cuda available: False): nothing to measure; "
              "GPU figures remain unmeasured. Run this on a machine with an NVIDIA GPU.")
        return 0
    from medfedpure.pipeline import MedFedPure

    device = "cpu" if args.cpu_dry_run else "cuda"
    results = {"machine": machine(torch, device), "cpu_dry_run": bool(args.cpu_dry_run)}
    print("machine:", json.dumps(results["machine"]), flush=True)
    if args.cpu_dry_run:
        print("CPU DRY RUN: the CPU stands in for the GPU; these figures say nothing about a GPU.")
    t = time.perf_counter()
    gpu_pipe = MedFedPure.from_pretrained(args.model, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    results["load_s"] = round(time.perf_counter() - t, 2)
    cpu_pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    names, images = load_examples()
    print(f"1. agreement, {len(names)} example scans ({', '.join(names)}), purify always:", flush=True)
    results["agreement"] = agreement(torch, gpu_pipe, cpu_pipe, images, args.atol, args.fp16 and device == "cuda",
                                     args.atol_fp16)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    print(f"2. latency on {device}:", flush=True)
    results["latency"] = latency(torch, gpu_pipe, images, batches, args.repeats, args.warmup)
    if device == "cuda":
        results["latency"]["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if not args.no_app:
        print("3. app start-up:", flush=True)
        results["app"] = app_startup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = results["agreement"]["passed"]
    print("GPU and CPU agree." if ok else "GPU and CPU DISAGREE (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
