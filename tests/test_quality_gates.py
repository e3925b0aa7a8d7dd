"""Quality gates of the shipped generative models, on validation scans (slow: run with `pytest -m slow`).

The same computation as `scripts/generative_gates.py` (which writes reports/generative_gates.md), run on the
shipped weights in `pretrained/`: the MAE's reconstructions must keep the diagnosis, and the purifier must not
lose what noise alone does not. Gates the shipped models are known to miss are strict xfails that state the
measured numbers, so a model that starts passing them is noticed too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".." / "shared" / "data"
LIMIT = 128                      # as reports/generative_gates.md
DEPTHS = (40, 80, 160)           # t_min, a middle depth, t_max of the shipped purification

pytestmark = pytest.mark.slow

# (gate, t) pairs the shipped models miss, with the numbers of reports/generative_gates.md.
_CLEAN = "clean 81.2% on these 128 validation scans"
KNOWN_MISSES: dict[tuple[str, int], str] = {
    ("within_1_point", 40): f"purified 79.7% at t=40, {_CLEAN}",
    ("at_least_noised", 80): "purified 79.7% at t=80 against 82.0% on the noised x_t",
    ("within_1_point", 80): f"purified 79.7% at t=80, {_CLEAN}",
    ("within_1_point", 160): f"purified 75.0% at t=160, {_CLEAN}",
}


@pytest.fixture(scope="module")
def gates(tmp_path_factory):
    if not (DATA / "br35h").is_dir():
        pytest.skip("data sets not found at ../shared/data")
    out = tmp_path_factory.mktemp("gates")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generative_gates.py"), "--model", str(ROOT / "pretrained"),
                    "--data", str(DATA), "--limit", str(LIMIT), "--t", ",".join(map(str, DEPTHS)), "--out", str(out)],
                   check=True, cwd=ROOT)
    return json.loads((out / "generative_gates.json").read_text())


def _depths(gate: str):
    """The depths to check, a known miss marked as a strict xfail (a model that starts passing fails the test)."""
    return [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[(gate, t)]))
            if (gate, t) in KNOWN_MISSES else t for t in DEPTHS]


@pytest.mark.parametrize("t", [0] if ("mae", 0) not in KNOWN_MISSES else [pytest.param(
    0, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[("mae", 0)]))])
def test_classifier_reads_mae_reconstructions_within_3_points(gates, t):
    m = gates["mae"]
    assert m["classifier_accuracy_on_reconstructions"] >= gates["clean_accuracy"] - 0.03, m


@pytest.mark.parametrize("t", _depths("at_least_noised"))
def test_purified_scans_at_least_as_readable_as_noised_ones(gates, t):
    (r,) = [r for r in gates["purifier"].values() if r["t"] == t]
    assert r["accuracy_purified"] >= r["accuracy_noised"], r


@pytest.mark.parametrize("t", _depths("within_1_point"))
def test_purified_scans_within_1_point_of_clean(gates, t):
    (r,) = [r for r in gates["purifier"].values() if r["t"] == t]
    assert r["accuracy_purified"] >= gates["clean_accuracy"] - 0.01, r
