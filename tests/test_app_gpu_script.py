"""benchmarks/bench_gpu.py: exits cleanly without CUDA; on a CUDA machine (-m gpu) it runs and must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "bench_gpu.py"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_gpu_benchmark_says_so_and_exits_0_without_cuda():
    if _cuda():
        pytest.skip("this machine has CUDA: see test_gpu_benchmark_on_cuda")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no CUDA device here" in run.stdout and "GPU figures remain unmeasured" in run.stdout


@pytest.mark.gpu
def test_gpu_benchmark_on_cuda(tmp_path):
    if not _cuda():
        pytest.skip("no CUDA device")
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--fp16", "--json", str(out)], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "GPU and CPU agree." in run.stdout and out.is_file()
