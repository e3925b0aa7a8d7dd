"""What an evaluation runs: attacks, budgets, purifier seeds, pairs. One default per setting, here; the
`evaluate` command's flags take theirs from `EvalSettings`. Imports neither torch nor the models."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["AttackName", "Purify", "Pairs", "EvalSettings", "parse_number", "L2_ATTACKS", "DEFENCE_ATTACKS"]


class _StrEnum(str, Enum):
    """Equal to, printed and JSON-encoded as its value (as enum.StrEnum, which needs Python 3.11)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class AttackName(_StrEnum):
    """The attacks `medfedpure.attacks.make_attack` builds (`none`: clean figures only)."""
    NONE = "none"
    FGSM = "fgsm"
    PGD = "pgd"
    PGDL2 = "pgdl2"
    CW = "cw"
    EOTPGD = "eotpgd"
    ADAPTIVE = "adaptive"


class Purify(_StrEnum):
    """Which scans the defence purifies: those the detector flags (score-dependent t*), all, or none."""
    FLAGGED = "flagged"
    ALWAYS = "always"
    NEVER = "never"


class Pairs(_StrEnum):
    """Test split / external folder: every scan with every hospital's model, or each with one (seeded)."""
    ALL = "all"
    ROUND_ROBIN = "round-robin"


L2_ATTACKS = (AttackName.PGDL2, AttackName.CW)                  # run once, whatever the L-inf eps list
DEFENCE_ATTACKS = (AttackName.ADAPTIVE, AttackName.EOTPGD)      # attack the defence itself (own batch size)


def parse_number(text) -> float:
    """'0.015', '8/255', '2e-3' -> float."""
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _one_of(kind: type[_StrEnum], value, what: str) -> _StrEnum:
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        raise ValueError(f"{what} must be {', '.join(names[:-1])} or {names[-1]}") from None


@dataclass
class EvalSettings:
    attacks: list[AttackName] = field(default_factory=lambda: [AttackName.PGD])
    eps: list[float] = field(default_factory=lambda: [0.015])
    step: str = "eps/5"                  # absolute ("0.003", "2/255") or relative to eps ("eps/4")
    steps: int = 7
    repeats: int = 1                     # purifier seeds per defended figure
    seed: int = 0                        # attack seed; purifier seeds are seed, seed + 1, ...
    purify: Purify = Purify.FLAGGED
    pairs: Pairs = Pairs.ALL             # test / external folder only; val: each hospital's own scans
    ablations: bool = False
    transfer_from: str | None = None     # craft the attacks on this classifier instead (black-box transfer)
    batch_size: int = 32
    adaptive_batch_size: int = 8
    eps_l2: float = 1.0
    cw_c: float = 1.0
    cw_steps: int = 50
    cw_lr: float = 0.01
    eot: int = 4
    lam: float = 1.0
    margin: float = 0.95
    evade_weight: float = 1.0
    gradient: str = "full"               # adaptive: full | bpda
    through: str = "always"              # adaptive: the purify mode it differentiates through
    loss: str = "ce"                     # adaptive: ce | margin (CW-style logit margin, stronger near the boundary)
    restarts: int = 1                    # adaptive: fresh restarts for the scans not yet fooled
    known_seed: bool = False             # adaptive: the attacker knows the defence's purifier noise (first seed)
    attack_cache: str | None = None      # keep each adversarial batch here; a stopped run resumes from them
    progress: bool = True

    def __post_init__(self):
        self._coerce()

    def _coerce(self) -> None:
        """Strings to their enums (equal to the same strings, so JSON and comparisons are unchanged)."""
        names = [m.value for m in AttackName]
        bad = [a for a in self.attacks if a not in names]
        if bad:
            raise ValueError(f"unknown attack(s) {bad}; choose from {', '.join(names)}")
        self.attacks = [AttackName(a) for a in self.attacks]
        self.purify = _one_of(Purify, self.purify, "purify")
        self.pairs = _one_of(Pairs, self.pairs, "pairs")

    def step_for(self, eps: float) -> float:
        text = str(self.step).strip()
        if text.startswith("eps/"):
            return eps / parse_number(text[4:])
        if text.startswith("eps*"):
            return eps * parse_number(text[4:])
        return parse_number(text)

    def validate(self) -> None:
        self._coerce()  # fields may have been assigned since construction
        if self.repeats < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("repeats, steps and batch size must be at least 1")
        if not self.eps and any(a not in L2_ATTACKS + (AttackName.NONE,) for a in self.attacks):
            raise ValueError("give at least one eps for the L-inf attacks")
        if any(e < 0 for e in self.eps):
            raise ValueError("eps must be >= 0")
        if self.transfer_from and any(a in DEFENCE_ATTACKS for a in self.attacks):
            raise ValueError("transfer attacks are crafted on another classifier; adaptive/eotpgd attack our defence")

