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
