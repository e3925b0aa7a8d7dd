"""Every command the README shows starts after the README's install: each one's --help, in a fresh process
from the repository root (the way a new user types it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """`python ...` lines of the README's code blocks, cut before their first option or placeholder."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S)
    out: list[list[str]] = []
    for lang, block in blocks:
        if lang not in ("", "bash", "sh"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("python ") or "pytest" in line or "pip " in line:
                continue
            words = []
            for w in line.split()[1:]:
                if w.startswith("-") and w != "-m" or not re.fullmatch(r"[a-z0-9_./-]+", w):
                    break
                words.append(w)
            if words and words not in out:
                out.append(words)
    return out


def test_readme_lists_the_main_entry_points():
    cmds = [" ".join(c) for c in readme_commands()]
    for expected in ("app.py", "-m medfedpure", "-m medfedpure evaluate", "benchmarks/bench_pipeline.py"):
        assert expected in cmds, f"README does not show `python {expected}`"


def test_every_readme_command_answers_help():
    procs = [(c, subprocess.Popen([sys.executable, *c, "--help"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)) for c in readme_commands()]
    failures = []
    for cmd, proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in out.lower():
            failures.append(f"python {' '.join(cmd)} --help -> exit {proc.returncode}: {out.strip()[-300:]}")
    assert not failures, "\n".join(failures)
