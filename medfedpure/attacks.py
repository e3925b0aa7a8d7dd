"""Adversarial attacks on MedFedPure: the paper's protocol, adaptive attacks through the defence, transfer.

Every attack takes scans ``x`` (N, 1, H, W) in [0, 1] and labels ``y`` (N,) and returns adversarial scans in
[0, 1]; after every step the perturbation is projected back onto the eps-ball (L-inf or L2) and clamped to
[0, 1]. The models return log-probabilities, which are valid logits for cross-entropy, argmax and margins.

    attack = make_attack("pgd", pipe.classifier_for(h), eps=0.015, step=0.003, steps=7, seed=0)
    x_adv = attack(x, y)                      # the SAME x_adv then goes to the undefended and defended model

Threat models
-------------
* **Paper protocol** (``fgsm``, ``pgd``, ``pgdl2``, ``cw``): the attacker sees only the hospital's classifier,
  ``pipe.classifier_for(h)``; the defence (MAE detector + purifier) is unknown to it. Implemented with
  torchattacks 3.3.0, wrapped so that (a) the model is never switched to training mode, (b) the random start is
  seeded, (c) CW works on log-probabilities (torchattacks' margin masks the true class with 0, which is the
  largest "logit" when all logits are negative, so its CW loss would be identically 0; fixed in `_CW`) and
  can move pixels that are exactly 0 or 1 (Br35H's black background; atanh(+-1) would freeze them).
* **Adaptive, white-box on the whole defence** (``adaptive``, class `AdaptivePGD`): PGD L-inf whose update
  direction combines, per scan and per step,

      g = n( 1/R sum_r grad_x CE(f(P(x; t*(s(x)), xi_r)), y) )        # through the purifier, EOT over its noise
        + w_e * n( grad_x CE(f(x), y) )                               # the unpurified branch (scan not flagged)
        - lambda * 1[s(x) > margin * tau_h] * n( grad_x s(x) )        # push the MAE score under the threshold

  where f is the hospital's classifier, P the DDIM purification chain (full back-propagation through every
  UNet call, or BPDA: identity gradient, with ``gradient="bpda"``), xi_r one of R purifier noise draws
  (a different generator seed for every draw and step: expectation over transformation, Athalye et al. 2018),
  s the MAE anomaly score (differentiable), tau_h the hospital's threshold, and n(v) = v / ||v||_1 per scan.
  Normalising each term makes the weights scale-free (the score gradient is orders of magnitude smaller than
  the cross-entropy gradient); adding the detector term only while the scan is still over the threshold is
  the selective detector-evasion of Bryniarski et al. (2022), the attack that broke MagNet-style detectors.
  ``through="always"`` (default) attacks P with the score-dependent t* (>= t_min) on every step, so the result
  survives purification if it is flagged; the plain-classifier term makes it fool f when it is not flagged.
  It starts at the clean scan (a uniform random start is noise, which is what the MAE detects) and, as
  AutoAttack does, returns per scan the latest iterate that fooled the real defence (purify flagged scans) on
  the attacker's own noise draw, else the last iterate. The evaluation then re-runs the real defence with the
  defender's independent purifier seeds.
* **EOT-PGD** (``eotpgd``): torchattacks' EOTPGD on any randomised model, e.g. ``pipe.defended(h, "always")``
  with ``generator=None`` (fresh purifier noise on every call); a simpler adaptive baseline.
* **Transfer / black-box**: any of the above crafted on a different model (e.g. the FedAvg baseline,
  `load_source_classifier`) and evaluated on ours: pass the source model to `make_attack`.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ATTACKS", "PAPER_PGD", "PGD_8_255", "AttackModel", "Attack", "NoAttack", "TorchAttack", "AdaptivePGD",
    "make_attack", "derive_seed", "purifier_noise", "perturbation_norms", "load_source_classifier",
]

ATTACKS = ("none", "fgsm", "pgd", "pgdl2", "cw", "eotpgd", "adaptive")
# The paper's protocol (Karami et al., Table 2) and the common CIFAR-style budget.
PAPER_PGD = {"eps": 0.015, "step": 0.003, "steps": 7}
PGD_8_255 = {"eps": 8 / 255, "step": 2 / 255, "steps": 10}


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (seed, batch key, step, ...)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def purifier_noise(names, seed: int, shape) -> torch.Tensor:
    """The evaluation's purifier noise: one seeded draw per scan name, (N, *shape[1:]). The attacker who knows
    the defender's seed draws exactly this."""
    gens = [torch.Generator().manual_seed(derive_seed("purifier", seed, n)) for n in names]
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gens])


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Run torchattacks' global-RNG draws (random start, EOT noise) from `seed`, leaving the caller's RNG alone."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    pipe = getattr(module, "pipe", None)
    return pipe.device if pipe is not None else torch.device("cpu")


class AttackModel(nn.Module):
    """Adapter for torchattacks: an anchor parameter (torchattacks reads its device from `parameters()`,
    and `DefendedClassifier` has none of its own) and a `train()` that never reaches the wrapped model, so an
    attack can never leave BatchNorm layers in training mode."""

    def __init__(self, net: nn.Module, device: torch.device | None = None):
        super().__init__()
        self.net = net.eval()
        self.anchor = nn.Parameter(torch.zeros(0, device=device or _device_of(net)), requires_grad=False)
        self.training = False

    def train(self, mode: bool = True):  # noqa: D102 - deliberately shallow
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attack:
    """``attack(x, y, key=None) -> x_adv``. `key` (any printable value) varies the seeded randomness per batch."""

    name = "attack"
    norm = "Linf"

    def __init__(self, eps: float | None = 0.0, seed: int = 0):
        self.eps, self.seed = (None if eps is None else float(eps)), int(seed)  # None: unbounded (CW)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, key=None) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"name": self.name, "norm": self.norm, "eps": self.eps, "seed": self.seed}


class NoAttack(Attack):
    name, norm = "none", "none"

    def __call__(self, x, y, key=None):
        return x.detach().clone()


class TorchAttack(Attack):
    """A torchattacks attack on `model`, seeded, in eval mode, with inputs/outputs on the model's device."""

    def __init__(self, name: str, ta_attack, eps: float, seed: int, norm: str, params: dict):
        super().__init__(eps, seed)
        self.name, self.norm, self.ta, self.params = name, norm, ta_attack, params

    def __call__(self, x, y, key=None):
        device = self.ta.device
        x = x.detach().to(device).float()
        y = y.detach().to(device).long()
        with _seeded(derive_seed(self.seed, self.name, key), device):
            adv = self.ta(x, y)
        return adv.detach().clamp(0, 1)

    def settings(self) -> dict:
        return {**super().settings(), **self.params, "implementation": f"torchattacks.{type(self.ta).__name__}"}


def _torchattacks():
    import torchattacks

    class _CW(torchattacks.CW):
        """torchattacks' CW, fixed for log-probability outputs and for pixels at exactly 0 or 1."""

        def inverse_tanh_space(self, x):
            return self.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))

        def f(self, outputs, labels):
            true = F.one_hot(labels, outputs.shape[1]).bool()
            real = outputs.masked_fill(~true, float("-inf")).amax(1)
            other = outputs.masked_fill(true, float("-inf")).amax(1)
            margin = (other - real) if self.targeted else (real - other)
            return torch.clamp(margin, min=-self.kappa)

    return torchattacks, _CW


class AdaptivePGD(Attack):
    """PGD L-inf through the whole defence with EOT and a detector-evasion term (see the module docstring)."""

    name = "adaptive"

    def __init__(self, pipe, hospital: int, eps: float = PAPER_PGD["eps"], step: float = PAPER_PGD["step"],
                 steps: int = PAPER_PGD["steps"], seed: int = 0, *, eot: int = 4, lam: float = 1.0,
                 margin: float = 0.95, evade_weight: float = 1.0, gradient: str = "full",
                 through: str = "always", random_start: bool = False, keep_best: bool = True,
                 loss: str = "ce", restarts: int = 1, known_noise_seed: int | None = None):
        super().__init__(eps, seed)
        if loss not in ("ce", "margin"):
            raise ValueError("loss must be 'ce' (cross-entropy) or 'margin' (best other class minus the true one)")
        if gradient not in ("full", "bpda"):
            raise ValueError("gradient must be 'full' (back-propagate through the purifier) or 'bpda'")
        if through not in ("always", "flagged", "never"):
            raise ValueError("through must be 'always', 'flagged' or 'never' (the classifier alone: the sanity check)")
        self.pipe, self.hospital = pipe, int(hospital)
        self.step, self.steps, self.eot = float(step), int(steps), max(int(eot), 1)
        self.lam, self.margin, self.evade_weight = float(lam), float(margin), float(evade_weight)
        self.gradient, self.through, self.random_start = gradient, through, bool(random_start)
        self.keep_best = bool(keep_best)
        # restarts > 1: every scan not yet fooled starts again from a random point of the eps-ball (the first
        # run starts at the clean scan unless random_start). known_noise_seed: the attacker knows the defender's
        # purifier seed and attacks exactly that noise (needs the scan names in `key`, as the evaluation passes).
        self.loss, self.restarts, self.known_noise_seed = loss, max(int(restarts), 1), known_noise_seed

    def _objective(self, logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the attacker ascends: cross-entropy, or the margin max_{k != y} log p_k - log p_y (CW-style)."""
        if self.loss == "ce":
            return F.nll_loss(logp, y, reduction="sum")
        true = logp.gather(1, y[:, None]).squeeze(1)
        other = logp.scatter(1, y[:, None], float("-inf")).amax(1)
        return (other - true).sum()

    def _draw_noise(self, shape, gen: torch.Generator, names) -> torch.Tensor:
        if self.known_noise_seed is None or names is None:
            return torch.randn(shape, generator=gen)
        return purifier_noise(names, self.known_noise_seed, shape)

    def settings(self) -> dict:
        return {**super().settings(), "step": self.step, "steps": self.steps, "eot": self.eot, "lambda": self.lam,
                "margin": self.margin, "evade_weight": self.evade_weight, "gradient": self.gradient,
                "through": self.through, "random_start": self.random_start, "keep_best": self.keep_best,
                "loss": self.loss, "restarts": self.restarts, "known_noise_seed": self.known_noise_seed,
                "hospital": self.hospital,
                "implementation": "medfedpure.attacks.AdaptivePGD"}

    @staticmethod
    def _unit(g: torch.Tensor) -> torch.Tensor:
        return g / g.abs().flatten(1).sum(1).clamp_min(1e-20).view(-1, *([1] * (g.dim() - 1)))

    def _purify(self, adv, t_star, noise, grad: bool):
        pipe = self.pipe
        if grad and self.gradient == "full":
            return pipe.purifier.purify(adv, t_star, steps=pipe.ddim_steps, noise=noise)
        with torch.no_grad():  # BPDA (or no gradient needed): forward through the purifier, identity backward
            purified = pipe.purifier.purify(adv.detach(), t_star, steps=pipe.ddim_steps, noise=noise)
        return adv + (purified - adv.detach()) if grad else purified

    def direction(self, adv: torch.Tensor, y: torch.Tensor, gen: torch.Generator, names=None):
        """At `adv`: the combined ascent direction, the MAE score, and whether the real defence (purify flagged
        scans) is fooled on the attacker's first noise draw (all detached)."""
        pipe, h = self.pipe, self.hospital
        model = pipe.classifier_for(h)
        adv = adv.detach().requires_grad_(True)
        _, _, score = pipe.detect(adv)
        g_score = torch.autograd.grad(score.sum(), adv)[0] if self.lam else torch.zeros_like(adv)
        logp = model(adv)
        g_plain = torch.autograd.grad(self._objective(logp, y), adv)[0]
        score = score.detach()
        flagged = score > pipe.threshold(h)
        fooled = logp.detach().argmax(1) != y
        t_star = pipe.t_star(score, h, self.through)
        g_pur = torch.zeros_like(adv)
        draws = 1 if self.known_noise_seed is not None and names is not None else self.eot
        if bool((t_star > 0).any()):
            for r in range(draws):
                noise = self._draw_noise(adv.shape, gen, names).to(adv.device, adv.dtype)
                logp_pur = model(self._purify(adv, t_star, noise, grad=True))
                g_pur += torch.autograd.grad(self._objective(logp_pur, y), adv)[0]
                if r == 0:  # flagged scans get the same t* in the real defence: reuse this draw as the check
                    fooled = torch.where(flagged, logp_pur.detach().argmax(1) != y, fooled)
        over = (score > self.margin * pipe.threshold(h)).float().view(-1, 1, 1, 1)
        g = (self._unit(g_pur / draws) + self.evade_weight * self._unit(g_plain)
             - self.lam * over * self._unit(g_score))
        return g.detach(), score, fooled

    @torch.no_grad()
    def fooled(self, adv: torch.Tensor, y: torch.Tensor, gen: torch.Generator, names=None) -> torch.Tensor:
        """Whether the real defence (purify flagged scans) misclassifies `adv` on one attacker-side noise draw."""
        pipe, h = self.pipe, self.hospital
        model = pipe.classifier_for(h)
        _, _, score = pipe.detect(adv)
        t_star = pipe.t_star(score, h, "never" if self.through == "never" else "flagged")
        noise = self._draw_noise(adv.shape, gen, names).to(adv.device, adv.dtype)
        x = self._purify(adv, t_star, noise, grad=False) if bool((t_star > 0).any()) else adv
        return model(x).argmax(1) != y

    @staticmethod
    def _names(key):
        """The scan names of an evaluation batch key (hospital, names), else None."""
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], tuple):
            return list(key[1])
        return None

    def _run(self, x, y, gen, names, random_start: bool):
        """One PGD run; returns (adversarial scans, whether each fooled the defence on the attacker's draw)."""
        adv = x.clone()
        if random_start:
            start = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * self.eps
            adv = (x + start).clamp(0, 1)
        best, found = adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            g, _, fooled = self.direction(adv, y, gen, names)
            if self.keep_best:  # the latest iterate that fooled the defence on the attacker's own draw
                best[fooled] = adv[fooled]
                found |= fooled
            adv = adv + self.step * g.sign()
            adv = (x + (adv - x).clamp(-self.eps, self.eps)).clamp(0, 1).detach()
        last = self.fooled(adv, y, gen, names)
        if self.keep_best:
            adv = torch.where((last | ~found).view(-1, 1, 1, 1), adv, best)
        return adv, last | found

    def __call__(self, x, y, key=None):
        device = self.pipe.device
        x = x.detach().to(device).float()
        y = y.detach().to(device).long()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, key))
        names = self._names(key)
        adv, done = self._run(x, y, gen, names, self.random_start)
        for _ in range(self.restarts - 1):  # again, from a random start, for the scans not yet fooled
            todo = torch.nonzero(~done).flatten()
            if not len(todo):
                break
            sub = [names[i] for i in todo.tolist()] if names is not None else None
            again, hit = self._run(x[todo], y[todo], gen, sub, True)
            adv[todo] = torch.where(hit.view(-1, 1, 1, 1), again, adv[todo])
            done[todo] = hit
        return adv


def make_attack(name: str, model: nn.Module | None = None, eps: float = PAPER_PGD["eps"],
                step: float = PAPER_PGD["step"], steps: int = PAPER_PGD["steps"], seed: int = 0, *,
                pipe=None, hospital: int | None = None, random_start: bool | None = None,
                eps_l2: float = 1.0, step_l2: float | None = None,
                cw_c: float = 1.0, cw_kappa: float = 0.0, cw_steps: int = 50, cw_lr: float = 0.01,
                eot: int = 4, lam: float = 1.0, margin: float = 0.95, evade_weight: float = 1.0,
                gradient: str = "full", through: str = "always", loss: str = "ce", restarts: int = 1,
                known_noise_seed: int | None = None) -> Attack:
    """Build an attack by name (see `ATTACKS`). `model` maps [0, 1] scans to log-probabilities.

    fgsm, pgd, eotpgd: L-inf `eps` (pgd/eotpgd: `step`, `steps`, random start). pgdl2: L2 `eps_l2`, step
    `step_l2` (default eps_l2 / 4), `steps`. cw: L2 Carlini-Wagner (`cw_c`, `cw_kappa`, `cw_steps`, `cw_lr`),
    unbounded (minimum-distortion) as in torchattacks. eotpgd: `eot` gradient samples per step.
    adaptive: needs `pipe` and `hospital` (or `model` = ``pipe.defended(h)``), see `AdaptivePGD`.
    """
    name = name.lower()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if name == "none":
        return NoAttack(0.0, seed)
    if name == "adaptive":
        pipe = pipe if pipe is not None else getattr(model, "pipe", None)
        hospital = hospital if hospital is not None else getattr(model, "hospital", None)
        if pipe is None or hospital is None:
            raise ValueError("the adaptive attack needs the pipeline and the hospital (pipe=..., hospital=...)")
        return AdaptivePGD(pipe, hospital, eps, step, steps, seed, eot=eot, lam=lam, margin=margin,
                           evade_weight=evade_weight, gradient=gradient, through=through,
                           random_start=bool(random_start),  # default False: noise would raise the MAE score
                           loss=loss, restarts=restarts, known_noise_seed=known_noise_seed)
    if model is None:
        raise ValueError(f"attack {name!r} needs the model to attack")
    random_start = True if random_start is None else bool(random_start)
    ta, CW = _torchattacks()
    target = AttackModel(model)
    if name == "fgsm":
        return TorchAttack(name, ta.FGSM(target, eps=eps), eps, seed, "Linf", {})
    if name == "pgd":
        return TorchAttack(name, ta.PGD(target, eps=eps, alpha=step, steps=steps, random_start=random_start),
                           eps, seed, "Linf", {"step": step, "steps": steps, "random_start": random_start})
    if name == "eotpgd":
        return TorchAttack(name, ta.EOTPGD(target, eps=eps, alpha=step, steps=steps, eot_iter=eot,
                                           random_start=random_start),
                           eps, seed, "Linf", {"step": step, "steps": steps, "eot": eot, "random_start": random_start})
    if name == "pgdl2":
        step_l2 = eps_l2 / 4 if step_l2 is None else step_l2
        return TorchAttack(name, ta.PGDL2(target, eps=eps_l2, alpha=step_l2, steps=steps, random_start=random_start),
                           eps_l2, seed, "L2", {"step": step_l2, "steps": steps, "random_start": random_start})
    # cw
    return TorchAttack(name, CW(target, c=cw_c, kappa=cw_kappa, steps=cw_steps, lr=cw_lr), None, seed,
                       "L2 (minimum distortion)", {"c": cw_c, "kappa": cw_kappa, "steps": cw_steps, "lr": cw_lr})


def perturbation_norms(x: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scan L-inf and L2 norms of adv - x."""
    d = (adv - x).flatten(1).float()
    return d.abs().amax(1), d.norm(dim=1)


class _SourceModel(nn.Module):
    def __init__(self, classifier, gates: dict):
        super().__init__()
        self.classifier = classifier
        self.gates = nn.ModuleDict({str(h): g for h, g in gates.items()})

    def for_hospital(self, hospital: int) -> nn.Module:
        from medfedpure.models.classifier import HospitalClassifier

        gate = self.gates[str(hospital)] if str(hospital) in self.gates else self.classifier.gate
        return HospitalClassifier(self.classifier, gate).eval()


def load_source_classifier(source: str | Path, device: str | torch.device = "cpu") -> _SourceModel:
    """A separately trained classifier for transfer attacks or as a drop-in classifier (FedAvg ablation).

    `source`: a classifier folder (`config.json` + `model.safetensors`, e.g. runs/fedavg/classifier) or a
    checkpoint folder holding `classifier/`. Safetensors only (nothing is unpickled). `.for_hospital(h)` gives
    the hospital's personalised model when the source has a gate for h, else its global model.
    """
    from medfedpure.pipeline import load_classifier

    folder = Path(source)
    if (folder / "classifier" / "config.json").is_file():
        folder = folder / "classifier"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no classifier at {source} (expected config.json + model.safetensors)")
    classifier, gates, _ = load_classifier(folder)
    model = _SourceModel(classifier, gates).to(device).eval()
    model.requires_grad_(False)
    model.folder = folder
    return model
