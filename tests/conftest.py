"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def examples_dir() -> Path:
    """The example scans shipped with the app (assets/examples, see its SOURCE.md)."""
    return REPO_ROOT / "assets" / "examples"


@pytest.fixture
def br35h_dir() -> Path:
    """The staged Br35H data set beside the repository (../shared/data/br35h); skips the test when absent."""
    path = REPO_ROOT / ".." / "shared" / "data" / "br35h"
    if not (path / "yes").is_dir():
        pytest.skip("Br35H data set not found at ../shared/data/br35h")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say plainly when checks on real data did not run (the data folders are missing), instead of a quiet 's'."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = sorted({str(r.longrepr[2]) for r in skipped if isinstance(r.longrepr, tuple)
                      and ("not found" in str(r.longrepr[2]) or "not at ../shared" in str(r.longrepr[2]))})
    if missing:
        terminalreporter.write_sep("!", "checks on real data were SKIPPED", yellow=True)
        for reason in missing:
            terminalreporter.write_line(f"  {reason}")
