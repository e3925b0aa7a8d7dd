"""The strong adaptive attack's sanity check, on the shipped classifier and real test scans.

An attack that cannot break the undefended classifier says nothing about a defence (Carlini et al. 2019,
"On evaluating adversarial robustness"). With the defence switched off (``through="never"``: no detector term,
no purifier), the adaptive attack at the strength used for the defended figures (margin loss, 100 steps,
restarts) must do at least as well as plain PGD and leave about 0% correct at 8/255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfedpure.attacks import PGD_8_255, make_attack
from medfedpure.hub import BUNDLED_DIR

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def pipe_and_scans():
    if not (DATA / "br35h").is_dir():
        pytest.skip("data sets not found at ../shared/data")
    from medfedpure.evaluation import load_scans
    from medfedpure.pipeline import MedFedPure

    pipe = MedFedPure.from_pretrained(str(BUNDLED_DIR), device="cpu")
    scans = load_scans(DATA, "test", BUNDLED_DIR / "split.csv", hospitals=[0], limit=12, seed=0)
    return pipe, scans.tensor(np.arange(len(scans))), torch.from_numpy(scans.labels).long()


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_adaptive_attack_breaks_the_undefended_classifier_at_least_as_well_as_pgd(pipe_and_scans):
    pipe, x, y = pipe_and_scans
    model = pipe.classifier_for(0)
    plain = make_attack("pgd", model, seed=0, **PGD_8_255)
    strong = make_attack("adaptive", pipe=pipe, hospital=0, eps=8 / 255, step=1 / 255, steps=100, seed=0,
                         lam=0.0, through="never", loss="margin", restarts=2)
    assert strong.settings()["loss"] == "margin" and strong.settings()["restarts"] == 2
    acc_clean = _accuracy(model, x, y)
    acc_plain = _accuracy(model, plain(x, y), y)
    adv = strong(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    acc_strong = _accuracy(model, adv, y)
    assert acc_clean >= 0.5                      # the check means something only on scans it got right
    assert acc_strong <= acc_plain
    assert acc_strong <= 1 / len(y)              # about 0%: at most one of the 12 scans survives


def test_known_noise_attacker_uses_the_defenders_noise(pipe_and_scans):
    """The attacker who knows the seed draws exactly the evaluation's purifier noise for each named scan."""
    from medfedpure.evaluation.defence import _Defence

    pipe, x, _ = pipe_and_scans
    attack = make_attack("adaptive", pipe=pipe, hospital=0, known_noise_seed=3)
    names = ["a", "b"]
    mine = attack._draw_noise(x[:2].shape, torch.Generator().manual_seed(0), names)
    theirs = _Defence(pipe, 2)._noise(names, 3, x[:2].shape)
    assert torch.equal(mine, theirs)
    assert attack._names((0, ("a", "b"))) == names and attack._names(None) is None
    with pytest.raises(ValueError, match="loss"):
        make_attack("adaptive", pipe=pipe, hospital=0, loss="hinge")
