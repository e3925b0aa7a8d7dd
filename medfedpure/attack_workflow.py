"""Attack a scan and watch the defence respond: the one workflow behind the app, its batch tab and the CLI.

    spec = AttackSpec("pgd", eps=8 / 255, steps=10, seed=0)    # validated (and made canonical) once, here
    run = analyze_attacked(pipe, x, hospital=0, spec=spec)      # x: (N, 1, H, W) in [0, 1]
    run.clean[0].prediction, run.result[0].final_prediction     # before the attack / after attack + defence

The steps: (1) a clean pass (classifier only, nothing purified) whose predictions are the labels the attack
pushes away from (at inference the true label is unknown); (2) the attack; (3) the whole pipeline (detect,
purify if flagged, classify) on the attacked scans. Without an attack only step 3 runs, on the scans as given.

Threat models (see `medfedpure.attacks`): ``fgsm`` and ``pgd`` see the hospital's classifier only (the paper's
protocol); ``adaptive`` is white-box on the whole defence (detector + purifier + classifier, EOT over the
purifier's noise). The step size is eps / 4.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["WORKFLOW_ATTACKS", "AttackSpec", "AttackedAnalysis", "analyze_attacked"]

WORKFLOW_ATTACKS = ("none", "fgsm", "pgd", "adaptive")
_TITLES = {"none": "no", "fgsm": "FGSM", "pgd": "PGD", "adaptive": "adaptive"}


def _number(value, what: str, kind=float):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    if kind is int:
        if number != int(number):
            raise ValueError(f"{what} must be a whole number, got {value!r}.")
        return int(number)
    return number


@dataclass(frozen=True)
class AttackSpec:
    """What to attack with, checked once: a name of `WORKFLOW_ATTACKS` (any case), L-inf `eps` in [0, 1]
    (pixels in [0, 1]), `steps` >= 1, `eot` >= 1 purifier-noise samples (adaptive only), `seed`.

    Canonical, so that equal attacks compare equal: an attack with eps 0 is "none" (eps 0, 1 step), FGSM takes
    1 step, and every attack but the adaptive one takes eot 1. Bad values raise ValueError in plain words.
    """

    name: str = "none"
    eps: float = 8 / 255
    steps: int = 10
    seed: int = 0
    eot: int = 1

    def __post_init__(self):
        name = str("none" if self.name is None else self.name).strip().lower()
        if name not in WORKFLOW_ATTACKS:
            raise ValueError(f"Unknown attack {name!r}; choose none, fgsm, pgd or adaptive.")
        eps = _number(8 / 255 if self.eps is None else self.eps, "eps")
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be between 0 and 1 (pixels in [0, 1]), got {eps}.")
        steps = _number(10 if self.steps is None else self.steps, "steps", int)
        seed = _number(0 if self.seed is None else self.seed, "seed", int)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}.")
        if name == "none" or eps == 0:
            name, eps, steps = "none", 0.0, 1
        eot = 1  # only the adaptive attack draws purifier noise
        if name == "adaptive":
            eot = _number(1 if self.eot is None else self.eot, "EOT samples", int)
            if eot < 1:
                raise ValueError(f"EOT samples must be at least 1, got {eot}.")
        if name == "fgsm":
            steps = 1
        for key, value in (("name", name), ("eps", eps), ("steps", steps), ("seed", seed), ("eot", eot)):
            object.__setattr__(self, key, value)

    @property
    def active(self) -> bool:
        """Whether the scans are perturbed at all."""
        return self.name != "none"

    @property
    def step(self) -> float:
        return self.eps / 4

    @property
    def title(self) -> str:
        """'FGSM', 'PGD', 'adaptive' (or 'no'), as in "PGD attack"."""
        return _TITLES[self.name]

    @property
    def counted_model(self) -> str:
        """The model called once per attack step: the classifier (FGSM/PGD) or the MAE detector (adaptive)."""
        return "mae" if self.name == "adaptive" else "classifier"

    def record(self) -> dict:
        """The settings as a JSON-ready dict, for reports."""
        if not self.active:
            return {"name": "none"}
        threat = ({"eot": self.eot, "threat_model": "white-box on the whole defence"} if self.name == "adaptive"
                  else {"threat_model": "sees the hospital's classifier only (paper protocol)"})
        return {"name": self.name, "eps": self.eps, "step": self.step, "steps": self.steps, "seed": self.seed,
                "target": "pushes away from the classifier's prediction on the clean scan (true label unknown)",
                **threat}

    def build(self, pipe, hospital: int):
        """The `medfedpure.attacks` attack object for this spec on `pipe`'s model of `hospital`."""
        from medfedpure.attacks import make_attack

        extra = {"pipe": pipe, "hospital": hospital, "eot": self.eot} if self.name == "adaptive" else {}
        return make_attack(self.name, pipe.classifier_for(hospital), eps=self.eps, step=self.step,
                           steps=self.steps, seed=self.seed, **extra)


@dataclass
class AttackedAnalysis:
    """The workflow's results: `clean` (the clean pass, classifier only; None without an attack), `labels` (what
    the attack pushed away from), `result` (the whole pipeline on the analyzed, i.e. attacked, scans) and the
    workflow's own stage times in ms ("classify_clean", "attack")."""

    spec: AttackSpec
    clean: object | None  # medfedpure.pipeline.AnalysisResult
    result: object        # medfedpure.pipeline.AnalysisResult
    labels: list[int] | None = None
    timings_ms: dict = field(default_factory=dict)


def analyze_attacked(pipe, x, hospital: int, spec: AttackSpec, *, purify: str = "flagged", seed: int | None = 0,
                     on_stage: Callable[[str, int], None] | None = None,
                     colours: list[float | None] | None = None) -> AttackedAnalysis:
    """Clean pass, labels, attack, then the whole pipeline on the attacked scans (see the module docstring).

    x: a (N, 1, H, W) tensor in [0, 1] on any device. purify and seed: as `MedFedPure.analyze` (seed draws the
    purifier's noise; the attack's randomness comes from spec.seed). on_stage(stage, total) is called before each
    stage: "clean" (total 0), "attack" (total: the attack's steps, each one call of `spec.counted_model`) and
    "defence" (total: the purifier's DDIM steps). colours: each file's colour share, for the
    out-of-distribution check (`MedFedPure.analyze`).
    """
    import numpy as np
    import torch

    report = on_stage or (lambda stage, total: None)
    x = x.to(pipe.device)
    clean = labels = None
    timings = {}
    if spec.active:
        report("clean", 0)
        t = time.perf_counter()
        clean = pipe.analyze(x, hospital=hospital, purify="never", seed=seed, colours=colours)
        timings["classify_clean"] = (time.perf_counter() - t) * 1000
        labels = [int(np.argmax(r.probabilities)) for r in clean]
        report("attack", spec.steps)
        t = time.perf_counter()
        x = spec.build(pipe, hospital)(x, torch.tensor(labels, device=pipe.device)).clamp(0, 1)
        timings["attack"] = (time.perf_counter() - t) * 1000
    report("defence", int(getattr(pipe, "ddim_steps", 0) or 0))
    result = pipe.analyze(x, hospital=hospital, purify=purify, seed=seed, colours=colours)
    return AttackedAnalysis(spec, clean, result, labels, timings)
