"""`evaluate`: per hospital a clean step and one attack step per planned attack (each with its ablations),
then the aggregation over hospitals into the results dict written to results.json."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from medfedpure.attacks import load_source_classifier, make_attack, perturbation_norms
from medfedpure.evaluation.attack_store import AttackStore, weights_digest
from medfedpure.evaluation.defence import _Defence, _type_predictions, ablation_t_stars, defence_info
from medfedpure.evaluation.metrics import (ATTACK, CLEAN, AttackMetrics, CleanMetrics, DetectAndReject, Spread,
                                           Variant, accuracy, aggregate, auroc, decision_metrics, record, roc_curve)
from medfedpure.evaluation.progress import Progress
from medfedpure.evaluation.provenance import RESULTS_FORMAT, _model_info, _relative, environment, git_commit
from medfedpure.evaluation.scans import ScanSet, make_pairs
from medfedpure.evaluation.settings import DEFENCE_ATTACKS, L2_ATTACKS, AttackName, EvalSettings, Purify

__all__ = ["evaluate"]


# --------------------------------------------------------------------------------------------- the plan
@dataclass
class PlannedAttack:
    """One attack of the run: an L-inf attack per eps, an L2 attack (pgdl2: eps_l2; cw: no budget) once."""
    name: AttackName
    eps: float | None
    step: float = 0.0

    @property
    def label(self) -> str:
        return str(self.name) if self.eps is None else f"{self.name} eps={self.eps:.4g}"


def _attack_plan(settings: EvalSettings) -> list[PlannedAttack]:
    plan = []
    for name in settings.attacks:
        if name == AttackName.NONE:
            continue
        if name in L2_ATTACKS:
            plan.append(PlannedAttack(name, settings.eps_l2 if name == AttackName.PGDL2 else None))
            continue
        plan += [PlannedAttack(name, float(eps), settings.step_for(eps)) for eps in settings.eps]
    return plan


def _build_attack(pipe, settings: EvalSettings, spec: PlannedAttack, h: int, source):
    common = dict(eps=spec.eps or 0.0, step=spec.step, steps=settings.steps, seed=settings.seed,
                  eps_l2=settings.eps_l2, cw_c=settings.cw_c, cw_steps=settings.cw_steps, cw_lr=settings.cw_lr,
                  eot=settings.eot, lam=settings.lam, margin=settings.margin, evade_weight=settings.evade_weight,
                  gradient=settings.gradient, through=settings.through)
    if spec.name == AttackName.ADAPTIVE:
        return make_attack(spec.name.value, pipe=pipe, hospital=h, loss=settings.loss, restarts=settings.restarts,
                           known_noise_seed=settings.seed if settings.known_seed else None, **common)
    if spec.name == AttackName.EOTPGD:
        target = pipe.defended(h, Purify.ALWAYS)  # generator None: fresh purifier noise on every call (EOT)
        return make_attack(spec.name.value, target, **common)
    model = source.for_hospital(h) if source is not None else pipe.classifier_for(h)
    return make_attack(spec.name.value, model, **common)


def _target_text(name: str, settings: EvalSettings) -> str:
    if name == AttackName.ADAPTIVE:
        grads = "BPDA" if settings.gradient == "bpda" else "full gradients"
        noise = "purifier noise known" if settings.known_seed else "EOT"
        return f"whole defence (MAE score + purifier, {noise}, {grads}, {settings.loss} loss)"
    if name == AttackName.EOTPGD:
        return "defended classifier, purify always (EOT over purifier noise)"
    if settings.transfer_from:
        return f"transfer from {_relative(settings.transfer_from)}"
    return "classifier only (paper protocol)"


# --------------------------------------------------------------------------------------------- run state
@dataclass
class _AttackRun:
    """What one planned attack collects over the hospitals."""
    spec: PlannedAttack
    per_hospital: dict[int, AttackMetrics] = field(default_factory=dict)
    neg: list[np.ndarray] = field(default_factory=list)   # clean MAE scores
    pos: list[np.ndarray] = field(default_factory=list)   # adversarial MAE scores
    points: dict[int, tuple] = field(default_factory=dict)  # hospital -> (FPR, TPR) at its threshold
    settings: dict = field(default_factory=dict)


@dataclass
class _Scored:
    """One hospital's scans (clean or adversarial): the classifier's answers, MAE scores, flags and t*."""
    h: int
    model: torch.nn.Module
    names: list[str]
    x: torch.Tensor
    y: torch.Tensor
    pred: torch.Tensor
    score: torch.Tensor
    flag: torch.Tensor
    t: torch.Tensor


class _Run:
    """Everything one `evaluate` call shares: pairs, seeds, the batched defence, timings, progress, records."""

    def __init__(self, pipe, scans: ScanSet, settings: EvalSettings, hospitals):
        self.t_start = time.perf_counter()
        self.pipe, self.scans, self.settings = pipe, scans, settings
        hospitals = list(pipe.hospitals if hospitals is None else hospitals)
        self.pairs = make_pairs(scans, hospitals, settings.pairs, settings.seed)
        self.seeds = [settings.seed + r for r in range(settings.repeats)]
        self.defence = _Defence(pipe, settings.batch_size)
        self.source = load_source_classifier(settings.transfer_from, pipe.device) if settings.transfer_from else None
        self.attacks = [_AttackRun(spec) for spec in _attack_plan(settings)]
        self.store = (AttackStore(settings.attack_cache, weights_digest(pipe, self.source))
                      if settings.attack_cache else None)
        self.clean: dict[int, CleanMetrics] = {}
        self.clean_preds: dict[int, tuple] = {}
        self.timings: dict[str, float] = {}
        self.n_pairs = sum(len(v) for v in self.pairs.values())
        # Progress units: per pair, 1 for the clean stage, and per attack 1 for the attack + 1 per purifier seed.
        self.progress = Progress(self.n_pairs * (1 + len(self.attacks) * (1 + len(self.seeds))),
                                 enabled=settings.progress)

    @contextmanager
    def timed(self, key: str):
        """Add the block's wall time to timings[key] (seconds)."""
        t0 = time.perf_counter()
        yield
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - t0, 3)

    def defended(self, view: _Scored, t: torch.Tensor, cache: bool, on_seed=None) -> list[torch.Tensor]:
        """The defence's predictions on `view` with t*, one per purifier seed."""
        return self.defence.predict_seeds(view.model, view.x, view.pred, t, view.names, self.seeds, cache, on_seed)

    def ablations(self, view: _Scored, cache: bool) -> tuple[Spread | None, Spread | None]:
        """Defended accuracy purifying every scan, and with t* = t_max for every flagged one (--ablations)."""
        if not self.settings.ablations:
            return None, None
        t_stars = ablation_t_stars(self.pipe, view.h, view.score, view.flag, view.t)
        return tuple(Spread.of([accuracy(p, view.y) for p in self.defended(view, t, cache)]) for t in t_stars)


def _disagreement(preds: list[torch.Tensor]) -> float | None:
    """Fraction of scans whose defended prediction changes between purifier seeds (None for one seed)."""
    return float((torch.stack(preds) != preds[0]).any(0).float().mean()) if len(preds) > 1 else None


# --------------------------------------------------------------------------------------------- evaluate
def evaluate(pipe, scans: ScanSet, settings: EvalSettings | None = None, hospitals: list[int] | None = None) -> dict:
    """Run the whole evaluation; returns the results dict written to results.json (see `medfedpure.evaluation`)."""
    settings = settings or EvalSettings()
    settings.validate()
    run = _Run(pipe, scans, settings, hospitals)
    with run.timed("clean_scores"):
        clean_scores = _clean_scores(run)
    for h in sorted(run.pairs):
        clean = _clean_step(run, h, clean_scores)
        for entry in run.attacks:
            _attack_step(run, clean, entry)
    run.progress.close()
    return _results(run)


def _clean_scores(run: _Run) -> torch.Tensor:
    """The MAE score of every scan some hospital classifies, once: the MAE does not depend on the hospital."""
    used = np.unique(np.concatenate(list(run.pairs.values()))) if run.pairs else np.zeros(0, dtype=np.int64)
    scores = torch.full((len(run.scans),), float("nan"), device=run.pipe.device)
    bs = run.settings.batch_size
    for i in range(0, len(used), bs):
        idx = used[i:i + bs]
        scores[idx] = run.defence.scores(run.scans.tensor(idx, run.pipe.device))
    return scores


def _clean_step(run: _Run, h: int, clean_scores: torch.Tensor) -> _Scored:
    """Hospital h on its clean scans: undefended and defended accuracy, false positives, the ablations."""
    pipe, idx = run.pipe, run.pairs[h]
    x = run.scans.tensor(idx, pipe.device)
    y = torch.from_numpy(run.scans.labels[idx]).to(pipe.device)
    model, thr = pipe.classifier_for(h), pipe.threshold(h)
    with run.timed("clean"):
        pred = run.defence.logp(model, x).argmax(1)
        run.clean_preds[h] = (idx, pred.cpu().numpy(), _type_predictions(model, x, run.settings.batch_size))
        s = clean_scores[idx]
        view = _Scored(h, model, [run.scans.names[i] for i in idx], x, y, pred, s, s > thr,
                       pipe.t_star(s, h, run.settings.purify))
        preds = run.defended(view, view.t, cache=True)
        always, fixed_t = run.ablations(view, cache=True)
        flagged = float(view.flag.float().mean())
        run.clean[h] = CleanMetrics(
            n=int(len(idx)), threshold=thr, clean_accuracy=accuracy(pred, y),
            clean_accuracy_defended=Spread.of([accuracy(p, y) for p in preds]), false_positive_rate=flagged,
            clean_score_mean=float(s.mean()), clean_purified_fraction=float((view.t > 0).float().mean()),
            clean_rejection_rate=flagged, clean_accuracy_on_accepted=accuracy(pred[~view.flag], y[~view.flag]),
            class_counts={str(c): int((y == c).sum()) for c in torch.unique(y).tolist()},
            clean_defended_disagreement=_disagreement(preds), always_clean_accuracy_defended=always,
            fixed_t_clean_accuracy_defended=fixed_t)
    run.progress.update(len(idx), f"clean h{h}")
    return view


def _attack(run: _Run, clean: _Scored, spec: PlannedAttack) -> tuple[torch.Tensor, dict]:
    """The adversarial scans of hospital h (batched; a batch's key fixes its attack noise) and the settings."""
    attack = _build_attack(run.pipe, run.settings, spec, clean.h, run.source)
    bs = run.settings.adaptive_batch_size if spec.name in DEFENCE_ATTACKS else run.settings.batch_size
    advs, store, attack_settings = [], run.store, attack.settings()
    for i in range(0, len(clean.x), bs):
        key = (clean.h, tuple(clean.names[i:i + bs]))
        x = clean.x[i:i + bs]
        adv = store.load(attack_settings, key, tuple(x.shape)) if store is not None else None
        if adv is None:
            adv = attack(x, clean.y[i:i + bs], key=key)
            if store is not None:
                store.save(attack_settings, key, adv)
        advs.append(adv.to(run.pipe.device))
        run.progress.update(len(x), f"{spec.label} h{clean.h}")
    return torch.cat(advs), attack_settings


def _attack_step(run: _Run, clean: _Scored, entry: _AttackRun) -> None:
    """Hospital h under one attack: the SAME adversarial scans go to the undefended model and to the defence."""
    spec, h, y = entry.spec, clean.h, clean.y
    with run.timed(f"attack {spec.label}"):
        adv, entry.settings = _attack(run, clean, spec)
    with run.timed(f"defence {spec.label}"):
        linf, l2 = perturbation_norms(clean.x, adv)
        pred = run.defence.logp(clean.model, adv).argmax(1)
        s = run.defence.scores(adv)
        flag = s > run.pipe.threshold(h)
        t = run.pipe.t_star(s, h, run.settings.purify)
        view = _Scored(h, clean.model, clean.names, adv, y, pred, s, flag, t)
        preds = run.defended(view, view.t, cache=False, on_seed=lambda r: run.progress.update(
            len(y), f"defence {spec.label} h{h} seed {r}"))
        always, fixed_t = run.ablations(view, cache=False)
        purified = view.t > 0
        fpr = run.clean[h].false_positive_rate
        entry.per_hospital[h] = AttackMetrics(
            n=int(len(y)), robust_accuracy_undefended=accuracy(pred, y),
            robust_accuracy_defended=Spread.of([accuracy(p, y) for p in preds]),
            detection_auroc=auroc(clean.score.cpu().numpy(), s.cpu().numpy()), false_positive_rate=fpr,
            true_positive_rate=float(flag.float().mean()), adversarial_score_mean=float(s.mean()),
            purified_fraction=float(purified.float().mean()),
            mean_t_star_purified=float(view.t[purified].float().mean()) if purified.any() else None,
            attack_success_rate=float(((pred != y) & (clean.pred == y)).float().sum()
                                      / max(int((clean.pred == y).sum()), 1)),
            perturbation_linf_max=float(linf.max()), perturbation_l2_mean=float(l2.mean()),
            adversarial_rejection_rate=float(flag.float().mean()),
            robust_accuracy_on_accepted=accuracy(pred[~flag], y[~flag]),
            reject_robust_accuracy=float(((pred == y) | flag).float().mean()),
            defended_disagreement=_disagreement(preds), always_robust_accuracy_defended=always,
            fixed_t_robust_accuracy_defended=fixed_t)
        entry.neg.append(clean.score.cpu().numpy())
        entry.pos.append(s.cpu().numpy())
        entry.points[h] = (fpr, entry.per_hospital[h].true_positive_rate)


# --------------------------------------------------------------------------------------------- aggregation
def _attack_summary(entry: _AttackRun, settings: EvalSettings) -> dict:
    """One attack over the hospitals: the mean figures, the pooled ROC, and each hospital's record."""
    per_h = [entry.per_hospital[h] for h in sorted(entry.per_hospital)]
    neg = np.concatenate(entry.neg) if entry.neg else np.zeros(0)
    pos = np.concatenate(entry.pos) if entry.pos else np.zeros(0)
    fpr, tpr, _ = roc_curve(neg, pos) if len(neg) and len(pos) else (np.zeros(0),) * 3
    return {"label": entry.spec.label, "name": entry.spec.name, "eps": entry.spec.eps,
            "target": _target_text(entry.spec.name, settings), "settings": entry.settings,
            **aggregate(AttackMetrics, per_h), "detection_auroc_pooled": auroc(neg, pos),
            "roc": {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr],
                    "operating_points": {str(h): list(p) for h, p in entry.points.items()}},
            "per_hospital": {str(h): record(entry.per_hospital[h]) for h in sorted(entry.per_hospital)}}


def _per_hospital(run: _Run, attacks_out: list[dict]) -> dict:
    """Each hospital's clean record with its record under the first (headline) attack."""
    out = {}
    for h, metrics in sorted(run.clean.items()):
        merged = record(metrics)
        if attacks_out:
            first = attacks_out[0]["per_hospital"][str(h)]
            merged.update({k: v for k, v in first.items() if k not in (ATTACK.n, ATTACK.false_positive_rate)})
        out[str(h)] = merged
    return out


def _ablations(clean: dict, attacks_out: list[dict], settings: EvalSettings) -> dict:
    """The variants of the defence side by side (headline attack), detect-and-reject among them."""
    first, purify = (attacks_out[0] if attacks_out else {}), settings.purify
    out = {"no_defence": Variant(clean.get(CLEAN.clean_accuracy), first.get(ATTACK.robust_accuracy_undefended)),
           f"defence_purify_{purify}": Variant(clean.get(CLEAN.clean_accuracy_defended),
                                               first.get(ATTACK.robust_accuracy_defended)),
           "detect_and_reject": DetectAndReject(
               clean.get(CLEAN.clean_rejection_rate), clean.get(CLEAN.clean_accuracy_on_accepted),
               first.get(ATTACK.adversarial_rejection_rate), first.get(ATTACK.robust_accuracy_on_accepted),
               first.get(ATTACK.reject_robust_accuracy))}
    if settings.ablations:
        out["purify_always"] = Variant(clean.get(CLEAN.always_clean_accuracy_defended),
                                       first.get(ATTACK.always_robust_accuracy_defended))
        out["fixed_t_star_t_max"] = Variant(clean.get(CLEAN.fixed_t_clean_accuracy_defended),
                                            first.get(ATTACK.fixed_t_robust_accuracy_defended))
        out["adaptive_t_star"] = out[f"defence_purify_{purify}"] if purify == Purify.FLAGGED else None
    return {k: asdict(v) if v is not None else None for k, v in out.items()}


def _results(run: _Run) -> dict:
    """The results dict: headline figures (mean over hospitals, first attack), then the details and provenance."""
    settings, pipe = run.settings, run.pipe
    attacks_out = [_attack_summary(entry, settings) for entry in run.attacks]
    clean = aggregate(CleanMetrics, [run.clean[h] for h in sorted(run.clean)])
    headline = attacks_out[0] if attacks_out else {}
    total = time.perf_counter() - run.t_start
    run.timings["total"] = round(total, 3)
    return {
        "format": RESULTS_FORMAT,
        "n": int(len(np.unique(np.concatenate(list(run.pairs.values()))))) if run.pairs else 0,
        "n_pairs": int(run.n_pairs), "hospitals": sorted(run.pairs),
        "pairs": "own val scans" if run.scans.info.get("split") == "val" else settings.pairs,
        "data": run.scans.info,
        **{k: clean.get(k) for k in (CLEAN.clean_accuracy, CLEAN.clean_accuracy_defended)},
        **decision_metrics(run.scans, run.clean_preds, seed=settings.seed),
        **{k: headline.get(k) for k in (ATTACK.robust_accuracy_undefended, ATTACK.robust_accuracy_defended,
                                        ATTACK.detection_auroc)},
        CLEAN.false_positive_rate: clean.get(CLEAN.false_positive_rate),
        ATTACK.true_positive_rate: headline.get(ATTACK.true_positive_rate),
        "attack": headline.get("label", "none"),
        "clean": clean, "attacks": attacks_out, "ablations": _ablations(clean, attacks_out, settings),
        "per_hospital": _per_hospital(run, attacks_out),
        "defence": defence_info(pipe, settings, run.pairs),
        "settings": {k: (_relative(v) if k in ("transfer_from", "attack_cache") and v else v)
                     for k, v in asdict(settings).items() if k != "progress"},
        "seeds": {"attack": settings.seed, "purifier": run.seeds, "subset": settings.seed, "pairs": settings.seed},
        "timings_s": run.timings, "seconds_per_pair": round(total / max(run.n_pairs, 1), 4),
        "purifications": run.defence.purified_count,
        "attack_cache": ({"batches_loaded": run.store.loaded, "batches_made": run.store.saved}
                         if run.store is not None else None),
        "model": _model_info(pipe, settings), "environment": environment(pipe.device), "git": git_commit(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
