"""Evaluate MedFedPure honestly: clean and adversarial accuracy with and without the defence, detection, ablations.

    scans = load_scans("../shared/data/br35h", split="test", split_csv="pretrained/split.csv")
    results = evaluate(pipe, scans, EvalSettings(attacks=["pgd"], repeats=3))

What is measured (see docs/DESIGN.md, "Evaluating a defence honestly"):
* Pairs (scan, hospital): on the global test split (and on an external folder, ``split="all"``) every scan is
  classified by every hospital's personalised model (``pairs="all"``) or, to save time, by one hospital each in
  a seeded round-robin (``pairs="round-robin"``); on the val split each hospital sees its OWN val scans.
  Headline figures are the mean over hospitals of each hospital's figure (``per_hospital`` holds them).
* One attack object per hospital and batch produces the adversarial scans; the SAME scans then go to the
  undefended classifier and to the defence, so baseline and defended numbers come from one attack.
* The defence is the pipeline's own stages (MAE score -> threshold -> t* -> DDIM purification -> classifier),
  batched; only scans with t* > 0 (the flagged ones, or all with ``purify="always"``) are purified. The
  purifier's noise for a scan is drawn from a generator seeded with (purifier seed, scan path), so a scan's
  result does not depend on the batch it was in or on --limit; with ``repeats=R`` every defended figure is
  reported as mean and std (ddof=1) over R purifier seeds, plus the fraction of pairs whose defended
  prediction changes between seeds.
* Detection: AUROC of the MAE score, clean vs adversarial (Mann-Whitney, ties counted half), the false-positive
  rate (clean scans flagged) and true-positive rate (adversarial scans flagged) at each hospital's threshold.
* Ablations (``ablations=True``): purify every scan; detect-and-reject without purifying (always computed:
  rejection rates, accuracy on the accepted scans, and accuracy counting a rejected adversarial as stopped);
  fixed t* = t_max for every flagged scan instead of the score-dependent t*. FedAvg vs personalised: run the
  evaluation again with the FedAvg classifier swapped in (`with_classifier`, CLI ``--classifier``).
"""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medfedpure.attacks import ATTACKS, derive_seed, load_source_classifier, make_attack, perturbation_norms

__all__ = [
    "EvalSettings", "ScanSet", "load_scans", "make_pairs", "evaluate", "auroc", "roc_curve", "with_classifier",
    "environment", "git_commit", "parse_number", "L2_ATTACKS", "DEFENCE_ATTACKS",
]

L2_ATTACKS = ("pgdl2", "cw")           # run once, whatever the L-inf eps list
DEFENCE_ATTACKS = ("adaptive", "eotpgd")  # attack the defence itself (slower; own batch size)
RESULTS_FORMAT = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------- settings
def parse_number(text) -> float:
    """'0.015', '8/255', '2e-3' -> float."""
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


@dataclass
class EvalSettings:
    attacks: list[str] = field(default_factory=lambda: ["pgd"])
    eps: list[float] = field(default_factory=lambda: [0.015])
    step: str = "eps/5"                  # absolute ("0.003", "2/255") or relative to eps ("eps/4")
    steps: int = 7
    repeats: int = 1                     # purifier seeds per defended figure
    seed: int = 0                        # attack seed; purifier seeds are seed, seed + 1, ...
    purify: str = "flagged"              # flagged | always | never
    pairs: str = "all"                   # all | round-robin (test / external folder only)
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
    gradient: str = "full"
    through: str = "always"
    progress: bool = True

    def step_for(self, eps: float) -> float:
        text = str(self.step).strip()
        if text.startswith("eps/"):
            return eps / parse_number(text[4:])
        if text.startswith("eps*"):
            return eps * parse_number(text[4:])
        return parse_number(text)

    def validate(self) -> None:
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ValueError(f"unknown attack(s) {bad}; choose from {', '.join(ATTACKS)}")
        if self.purify not in ("flagged", "always", "never"):
            raise ValueError("purify must be flagged, always or never")
        if self.pairs not in ("all", "round-robin"):
            raise ValueError("pairs must be all or round-robin")
        if self.repeats < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("repeats, steps and batch size must be at least 1")
        if not self.eps and any(a not in L2_ATTACKS + ("none",) for a in self.attacks):
            raise ValueError("give at least one eps for the L-inf attacks")
        if any(e < 0 for e in self.eps):
            raise ValueError("eps must be >= 0")
        if self.transfer_from and any(a in DEFENCE_ATTACKS for a in self.attacks):
            raise ValueError("transfer attacks are crafted on another classifier; adaptive/eotpgd attack our defence")


# --------------------------------------------------------------------------------------------- data
@dataclass
class ScanSet:
    images: np.ndarray   # uint8 (N, H, W), preprocessed exactly as in training
    labels: np.ndarray   # int64 (N,)
    names: list[str]     # paths relative to the data folder (stable per-scan keys)
    home: np.ndarray     # int64 (N,): the scan's hospital for train/val rows, -1 otherwise
    info: dict
    source: np.ndarray | None = None       # str (N,): source (and site) name per scan, for per-source metrics
    groups: np.ndarray | None = None       # int64 (N,): duplicate group / patient, for bootstrap intervals
    tumour_type: np.ndarray | None = None  # int64 (N,): index into TUMOUR_TYPES, -1 unknown or no tumour

    def __post_init__(self):
        n = len(self.labels)
        if self.source is None:
            self.source = np.full(n, "", dtype=object)
        if self.groups is None:
            self.groups = np.arange(n, dtype=np.int64)
        if self.tumour_type is None:
            self.tumour_type = np.full(n, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def tensor(self, idx, device="cpu") -> torch.Tensor:
        return torch.from_numpy(self.images[np.asarray(idx)].astype(np.float32) / 255.0).unsqueeze(1).to(device)


def _stratified_pick(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` indices, classes in proportion (at least one of each present class), seeded; sorted."""
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    quota = {c: (labels == c).sum() * limit / len(labels) for c in classes}
    take = {c: max(1, int(math.floor(q))) for c, q in quota.items()}
    for c in sorted(classes, key=lambda c: quota[c] - math.floor(quota[c]), reverse=True):
        if sum(take.values()) >= limit:
            break
        take[c] += 1
    while sum(take.values()) > limit:
        take[max(take, key=take.get)] -= 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:take[c]] for c in classes]
    return np.sort(np.concatenate(picked))


def _external_scans(data_dir, classes: str | None):
    """Every labelled scan of a folder (class folders from `classes` or a known layout), grouped by copies."""
    from medfedpure import data as datamod
    from medfedpure.config import TUMOUR_TYPES
    from medfedpure.sources import detect_class_map, parse_class_map

    class_map = parse_class_map(classes) if classes else detect_class_map(data_dir)
    records, types = [], []
    for folder, (label, kind) in class_map.items():
        recs = datamod.list_labelled(data_dir, {folder: label})
        records += recs
        types += [TUMOUR_TYPES.index(kind) if kind else -1] * len(recs)
    order = np.argsort([r.path for r in records], kind="stable")
    records, types = [records[i] for i in order], np.asarray(types, dtype=np.int64)[order]
    folder = datamod.read_folder(data_dir, records)
    if folder.errors:
        listed = "; ".join(list(folder.errors.values())[:10])
        raise datamod.DataError(f"{len(folder.errors)} file(s) in {data_dir} cannot be read: {listed}")
    groups = datamod.find_duplicate_groups(folder.images, folder.sha256).group
    top = np.array([r.path.split("/", 1)[0] for r in records], dtype=object)
    mapping = {k: (["no_tumour", "tumour"][v[0]] + (":" + v[1] if v[1] else "")) for k, v in class_map.items()}
    return folder.images, np.array([r.label for r in records], np.int64), [r.path for r in records], groups, \
        types, top, mapping


def load_scans(data_dir, split: str = "test", split_csv=None, hospitals=None, limit: int | None = None,
               seed: int = 0, classes: str | None = None) -> ScanSet:
    """The scans to evaluate. test/val: the split CSV's rows, every file's sha256 checked (`load_split_scans`);
    all: every labelled scan in `data_dir` (an external data set in the same folder layout, no CSV).
    `limit`: a seeded class-stratified subset of at most `limit` scans (per hospital for val)."""
    from medfedpure import data as datamod

    if split == "all":
        images, labels, names, groups, types, source, mapping = _external_scans(data_dir, classes)
        home = np.full(len(labels), -1, dtype=np.int64)
        source = np.full(len(labels), Path(data_dir).name, dtype=object)
        info = {"split": "all", "split_csv": None, "split_sha256": None, "sha256_checked": False,
                "classes": mapping, "groups": int(len(np.unique(groups)))}
    elif split in ("test", "val"):
        if split_csv is None or not Path(split_csv).is_file():
            raise datamod.DataError(f"split file not found: {split_csv}")
        cache = datamod.load_split_scans(data_dir, split_csv, split,
                                         hospital=list(hospitals) if split == "val" and hospitals else None)
        images, labels, names, home = cache.images, cache.labels, list(cache.paths), cache.hospital
        groups, types = cache.group, cache.tumour_type
        sites = _sites(split_csv, names)
        source = np.array([f"{s}:{t}" if t else s for s, t in zip(cache.source.tolist(), sites)], dtype=object)
        info = {"split": split, "split_csv": Path(split_csv).name, "split_sha256": cache.split_sha256,
                "sha256_checked": True}
    else:
        raise ValueError("split must be test, val or all")
    n_available = len(labels)
    if limit is not None and limit > 0:
        if split == "val":
            keep = np.concatenate([np.flatnonzero(home == h)[_stratified_pick(labels[home == h], limit, seed)]
                                   for h in np.unique(home)])
            keep = np.sort(keep)
        else:
            keep = _stratified_pick(labels, limit, seed)
        images, labels, home = images[keep], labels[keep], home[keep]
        groups, types, source = groups[keep], types[keep], source[keep]
        names = [names[i] for i in keep]
    info.update(dir=_relative(Path(data_dir).resolve()), n_available=int(n_available), limit=limit, n=int(len(labels)),
                class_counts={str(c): int((labels == c).sum()) for c in np.unique(labels)})
    return ScanSet(images, labels, names, np.asarray(home, dtype=np.int64), info, np.asarray(source, dtype=object),
                   np.asarray(groups, dtype=np.int64), np.asarray(types, dtype=np.int64))


def _sites(split_csv, names: list[str]) -> list[str]:
    from medfedpure.data import read_split

    site = {r.path: r.site for r in read_split(split_csv)}
    return [site.get(n, "") for n in names]


def make_pairs(scans: ScanSet, hospitals: list[int], mode: str = "all", seed: int = 0) -> dict[int, np.ndarray]:
    """hospital -> indices of the scans it classifies (see the module docstring)."""
    if scans.info.get("split") == "val":
        return {h: np.flatnonzero(scans.home == h) for h in hospitals if (scans.home == h).any()}
    if mode == "all":
        return {h: np.arange(len(scans)) for h in hospitals}
    order = np.random.default_rng(seed).permutation(len(scans))
    owner = np.empty(len(scans), dtype=np.int64)
    owner[order] = np.asarray(hospitals)[np.arange(len(scans)) % len(hospitals)]
    return {h: np.flatnonzero(owner == h) for h in hospitals if (owner == h).any()}


# --------------------------------------------------------------------------------------------- metrics
def _rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank (as scipy.stats.rankdata(method='average'))."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(negatives, positives) -> float | None:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney U statistic / (n_pos n_neg)."""
    neg, pos = np.asarray(negatives, dtype=np.float64).ravel(), np.asarray(positives, dtype=np.float64).ravel()
    if len(neg) == 0 or len(pos) == 0:
        return None
    ranks = _rankdata(np.concatenate([neg, pos]))
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def roc_curve(negatives, positives, max_points: int | None = 201):
    """(fpr, tpr, thresholds) flagging score >= threshold, thresholds descending from +inf."""
    neg, pos = np.sort(np.asarray(negatives, float)), np.sort(np.asarray(positives, float))
    thr = np.r_[np.inf, np.unique(np.concatenate([neg, pos]))[::-1]]
    fpr = 1.0 - np.searchsorted(neg, thr, side="left") / max(len(neg), 1)
    tpr = 1.0 - np.searchsorted(pos, thr, side="left") / max(len(pos), 1)
    if max_points and len(thr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(thr) - 1, max_points).round().astype(int), len(thr) - 1])
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    return fpr, tpr, thr


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float | None:
    return float((pred == y).float().mean()) if len(y) else None


def _summary(values) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "values": []}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "values": [float(v) for v in arr]}


def _macro(per_h: dict, key: str):
    vals = [d[key] for d in per_h.values() if d.get(key) is not None]
    if not vals:
        return None
    if isinstance(vals[0], dict):  # per-seed figures: macro mean per seed, then mean/std over seeds
        width = min(len(v["values"]) for v in vals)
        return _summary([np.mean([v["values"][r] for v in vals]) for r in range(width)])
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------- progress
class Progress:
    """tqdm on a terminal, else a plain stderr line with counts, rate and ETA at most every `every` seconds."""

    def __init__(self, total: int, desc: str = "evaluate", enabled: bool = True, every: float = 30.0):
        self.total, self.desc, self.enabled, self.every = int(total), desc, enabled, every
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=desc, unit="scan", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter() - self.t0
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / now if now > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"[{self.desc}] {self.done}/{self.total} scan-evaluations, {now:.0f} s elapsed, "
                  f"ETA {eta:.0f} s {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------- defence
def with_classifier(pipe, source, device=None):
    """A copy of `pipe` whose classifier is another one (e.g. the FedAvg baseline), same detector and purifier."""
    from medfedpure.pipeline import MedFedPure

    src = load_source_classifier(source, device or pipe.device)
    new = MedFedPure(src.classifier, {int(h): g for h, g in src.gates.items()}, pipe.mae, pipe.detector_config,
                     pipe.purifier, {"t_min": pipe.t_min, "t_max": pipe.t_max, "ddim_steps": pipe.ddim_steps},
                     device=device or pipe.device, source_description=pipe.source_description)
    new.class_names = pipe.class_names
    new.source = getattr(pipe, "source", None)
    new.classifier_source = str(source)
    return new


class _Defence:
    """The pipeline's stages, batched, with per-scan purifier noise and a cache for clean purifications."""

    def __init__(self, pipe, batch_size: int):
        self.pipe, self.bs = pipe, batch_size
        self.cache: dict = {}
        self.purified_count = 0

    @torch.no_grad()
    def logp(self, model, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x[i:i + self.bs]) for i in range(0, len(x), self.bs)]) if len(x) else \
            torch.zeros(0, 2, device=x.device)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.pipe.detect(x[i:i + self.bs])[2] for i in range(0, len(x), self.bs)]
        return torch.cat(out) if out else torch.zeros(0, device=x.device)

    def _noise(self, names: list[str], seed: int, shape) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(derive_seed("purifier", seed, n)) for n in names]
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gens])

    @torch.no_grad()
    def purify(self, x: torch.Tensor, t: torch.Tensor, names: list[str], seed: int, cache: bool) -> torch.Tensor:
        out = torch.empty_like(x)
        todo = []
        for i, name in enumerate(names):
            hit = self.cache.get((name, int(t[i]), seed)) if cache else None
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)
        for j in range(0, len(todo), self.bs):
            idx = todo[j:j + self.bs]
            xb, tb = x[idx], t[idx]
            noise = self._noise([names[i] for i in idx], seed, xb.shape).to(x.device, x.dtype)
            pur = self.pipe.purifier.purify(xb, tb, steps=self.pipe.ddim_steps, noise=noise)
            self.purified_count += len(idx)
            out[idx] = pur
            if cache:
                for k, i in enumerate(idx):
                    self.cache[(names[i], int(t[i]), seed)] = pur[k].clone()
        return out

    def predict(self, model, x, base_pred, t, names, seed, cache=False) -> torch.Tensor:
        """The defence's answer: the classifier on the purified scan where t* > 0, else on the scan itself."""
        pred = base_pred.clone()
        todo = torch.nonzero(t > 0).flatten()
        if len(todo):
            sel = todo.tolist()
            purified = self.purify(x[todo], t[todo], [names[i] for i in sel], seed, cache)
            pred[todo] = self.logp(model, purified).argmax(1)
        return pred


# --------------------------------------------------------------------------------------------- evaluate
def _attack_plan(settings: EvalSettings) -> list[dict]:
    plan = []
    for name in settings.attacks:
        if name == "none":
            continue
        if name in L2_ATTACKS:
            plan.append({"name": name, "eps": settings.eps_l2 if name == "pgdl2" else None})
            continue
        for eps in settings.eps:
            plan.append({"name": name, "eps": float(eps), "step": settings.step_for(eps)})
    for p in plan:
        eps = p["eps"]
        p["label"] = p["name"] if eps is None else f"{p['name']} eps={eps:.4g}"
    return plan


def _build_attack(pipe, settings: EvalSettings, spec: dict, h: int, source):
    name = spec["name"]
    common = dict(eps=spec["eps"] or 0.0, step=spec.get("step", 0.0), steps=settings.steps, seed=settings.seed,
                  eps_l2=settings.eps_l2, cw_c=settings.cw_c, cw_steps=settings.cw_steps, cw_lr=settings.cw_lr,
                  eot=settings.eot, lam=settings.lam, margin=settings.margin, evade_weight=settings.evade_weight,
                  gradient=settings.gradient, through=settings.through)
    if name == "adaptive":
        return make_attack(name, pipe=pipe, hospital=h, **common)
    if name == "eotpgd":
        target = pipe.defended(h, "always")  # generator None: fresh purifier noise on every call (EOT)
        return make_attack(name, target, **common)
    model = source.for_hospital(h) if source is not None else pipe.classifier_for(h)
    return make_attack(name, model, **common)


def evaluate(pipe, scans: ScanSet, settings: EvalSettings | None = None, hospitals: list[int] | None = None) -> dict:
    """Run the whole evaluation; returns the results dict written to results.json (see the module docstring)."""
    settings = settings or EvalSettings()
    settings.validate()
    t_start = time.perf_counter()
    hospitals = list(pipe.hospitals if hospitals is None else hospitals)
    pairs = make_pairs(scans, hospitals, settings.pairs, settings.seed)
    plan = _attack_plan(settings)
    seeds = [settings.seed + r for r in range(settings.repeats)]
    device = pipe.device
    defence = _Defence(pipe, settings.batch_size)
    source = load_source_classifier(settings.transfer_from, device) if settings.transfer_from else None
    timings: dict[str, float] = {}

    def lap(key: str, t0: float) -> None:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t0, 3)

    n_pairs = sum(len(v) for v in pairs.values())
    # Progress units: per pair, 1 for the clean stage, and per attack 1 for the attack + 1 per purifier seed.
    progress = Progress(n_pairs * (1 + len(plan) * (1 + len(seeds))), enabled=settings.progress)

    # Clean scores once per scan: the MAE does not depend on the hospital.
    t0 = time.perf_counter()
    used = np.unique(np.concatenate(list(pairs.values()))) if pairs else np.zeros(0, dtype=np.int64)
    clean_scores = torch.full((len(scans),), float("nan"), device=device)
    for i in range(0, len(used), settings.batch_size):
        idx = used[i:i + settings.batch_size]
        clean_scores[idx] = defence.scores(scans.tensor(idx, device))
    lap("clean_scores", t0)

    per_h: dict[int, dict] = {}
    clean_preds: dict[int, tuple] = {}
    per_attack: list[dict] = [{"spec": s, "per_hospital": {}, "neg": [], "pos": [], "points": {}} for s in plan]
    for h in sorted(pairs):
        idx = pairs[h]
        names = [scans.names[i] for i in idx]
        x = scans.tensor(idx, device)
        y = torch.from_numpy(scans.labels[idx]).to(device)
        model = pipe.classifier_for(h)
        thr = pipe.threshold(h)

        t0 = time.perf_counter()
        pred = defence.logp(model, x).argmax(1)
        clean_preds[h] = (idx, pred.cpu().numpy(), _type_predictions(model, x, settings.batch_size))
        s = clean_scores[idx]
        flag = s > thr
        t_main = pipe.t_star(s, h, settings.purify)
        d_preds = [defence.predict(model, x, pred, t_main, names, r, cache=True) for r in seeds]
        rec = {"n": int(len(idx)), "threshold": thr, "clean_accuracy": _acc(pred, y),
               "clean_accuracy_defended": _summary([_acc(p, y) for p in d_preds]),
               "false_positive_rate": float(flag.float().mean()), "clean_score_mean": float(s.mean()),
               "clean_purified_fraction": float((t_main > 0).float().mean()),
               "clean_rejection_rate": float(flag.float().mean()),
               "clean_accuracy_on_accepted": _acc(pred[~flag], y[~flag]),
               "class_counts": {str(c): int((y == c).sum()) for c in torch.unique(y).tolist()}}
        if settings.repeats > 1:
            rec["clean_defended_disagreement"] = float((torch.stack(d_preds) != d_preds[0]).any(0).float().mean())
        if settings.ablations:
            t_always = pipe.t_star(s, h, "always")
            t_fixed = torch.where(flag, torch.full_like(t_main, pipe.t_max), torch.zeros_like(t_main))
            rec["always_clean_accuracy_defended"] = _summary(
                [_acc(defence.predict(model, x, pred, t_always, names, r, cache=True), y) for r in seeds])
            rec["fixed_t_clean_accuracy_defended"] = _summary(
                [_acc(defence.predict(model, x, pred, t_fixed, names, r, cache=True), y) for r in seeds])
        per_h[h] = rec
        lap("clean", t0)
        progress.update(len(idx), f"clean h{h}")

        for entry in per_attack:
            spec = entry["spec"]
            t0 = time.perf_counter()
            attack = _build_attack(pipe, settings, spec, h, source)
            bs = settings.adaptive_batch_size if spec["name"] in DEFENCE_ATTACKS else settings.batch_size
            advs = []
            for i in range(0, len(idx), bs):
                advs.append(attack(x[i:i + bs], y[i:i + bs], key=(h, tuple(names[i:i + bs]))).to(device))
                progress.update(min(bs, len(idx) - i), f"{spec['label']} h{h}")
            adv = torch.cat(advs)
            lap(f"attack {spec['label']}", t0)
            t0 = time.perf_counter()
            linf, l2 = perturbation_norms(x, adv)
            pred_adv = defence.logp(model, adv).argmax(1)
            s_adv = defence.scores(adv)
            flag_adv = s_adv > thr
            t_adv = pipe.t_star(s_adv, h, settings.purify)
            dp = []
            for r in seeds:
                dp.append(defence.predict(model, adv, pred_adv, t_adv, names, r))
                progress.update(len(idx), f"defence {spec['label']} h{h} seed {r}")
            accepted = ~flag_adv
            a = {"n": int(len(idx)), "robust_accuracy_undefended": _acc(pred_adv, y),
                 "robust_accuracy_defended": _summary([_acc(p, y) for p in dp]),
                 "detection_auroc": auroc(s.cpu().numpy(), s_adv.cpu().numpy()),
                 "false_positive_rate": per_h[h]["false_positive_rate"],
                 "true_positive_rate": float(flag_adv.float().mean()),
                 "adversarial_score_mean": float(s_adv.mean()),
                 "purified_fraction": float((t_adv > 0).float().mean()),
                 "mean_t_star_purified": float(t_adv[t_adv > 0].float().mean()) if (t_adv > 0).any() else None,
                 "attack_success_rate": float(((pred_adv != y) & (pred == y)).float().sum()
                                              / max(int((pred == y).sum()), 1)),
                 "perturbation_linf_max": float(linf.max()), "perturbation_l2_mean": float(l2.mean()),
                 # detect-and-reject (no purification): a flagged scan is rejected
                 "adversarial_rejection_rate": float(flag_adv.float().mean()),
                 "robust_accuracy_on_accepted": _acc(pred_adv[accepted], y[accepted]),
                 "reject_robust_accuracy": float(((pred_adv == y) | flag_adv).float().mean())}
            if settings.repeats > 1:
                a["defended_disagreement"] = float((torch.stack(dp) != dp[0]).any(0).float().mean())
            if settings.ablations:
                t_always = pipe.t_star(s_adv, h, "always")
                t_fixed = torch.where(flag_adv, torch.full_like(t_adv, pipe.t_max), torch.zeros_like(t_adv))
                a["always_robust_accuracy_defended"] = _summary(
                    [_acc(defence.predict(model, adv, pred_adv, t_always, names, r), y) for r in seeds])
                a["fixed_t_robust_accuracy_defended"] = _summary(
                    [_acc(defence.predict(model, adv, pred_adv, t_fixed, names, r), y) for r in seeds])
            entry["per_hospital"][h] = a
            entry["neg"].append(s.cpu().numpy())
            entry["pos"].append(s_adv.cpu().numpy())
            entry["points"][h] = (per_h[h]["false_positive_rate"], a["true_positive_rate"])
            entry["settings"] = attack.settings()
            lap(f"defence {spec['label']}", t0)
    progress.close()

    # ------------------------------------------------------------------ aggregate (mean over hospitals)
    clean_keys = ["clean_accuracy", "clean_accuracy_defended", "false_positive_rate", "clean_rejection_rate",
                  "clean_accuracy_on_accepted", "clean_purified_fraction", "clean_defended_disagreement",
                  "always_clean_accuracy_defended", "fixed_t_clean_accuracy_defended"]
    attack_keys = ["robust_accuracy_undefended", "robust_accuracy_defended", "detection_auroc", "true_positive_rate",
                   "purified_fraction", "mean_t_star_purified", "attack_success_rate", "perturbation_l2_mean",
                   "adversarial_rejection_rate", "robust_accuracy_on_accepted", "reject_robust_accuracy",
                   "defended_disagreement", "always_robust_accuracy_defended", "fixed_t_robust_accuracy_defended"]
    attacks_out = []
    for entry in per_attack:
        ph = entry["per_hospital"]
        agg = {k: _macro(ph, k) for k in attack_keys if any(k in d for d in ph.values())}
        agg["perturbation_linf_max"] = max((d["perturbation_linf_max"] for d in ph.values()), default=None)
        neg = np.concatenate(entry["neg"]) if entry["neg"] else np.zeros(0)
        pos = np.concatenate(entry["pos"]) if entry["pos"] else np.zeros(0)
        agg["detection_auroc_pooled"] = auroc(neg, pos)
        fpr, tpr, thr = roc_curve(neg, pos) if len(neg) and len(pos) else (np.zeros(0),) * 3
        attacks_out.append({
            "label": entry["spec"]["label"], "name": entry["spec"]["name"], "eps": entry["spec"]["eps"],
            "target": _target_text(entry["spec"]["name"], settings),
            "settings": entry.get("settings", {}), **agg,
            "roc": {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr],
                    "operating_points": {str(h): list(p) for h, p in entry["points"].items()}},
            "per_hospital": {str(h): d for h, d in sorted(ph.items())},
        })

    clean = {k: _macro(per_h, k) for k in clean_keys if any(k in d for d in per_h.values())}
    per_hospital = {}
    for h, rec in sorted(per_h.items()):
        merged = dict(rec)
        if attacks_out:
            first = attacks_out[0]["per_hospital"][str(h)]
            merged.update({k: v for k, v in first.items() if k not in ("n", "false_positive_rate")})
        per_hospital[str(h)] = merged
    headline = attacks_out[0] if attacks_out else {}
    total = time.perf_counter() - t_start
    timings["total"] = round(total, 3)
    results = {
        "format": RESULTS_FORMAT,
        "n": int(len(np.unique(np.concatenate(list(pairs.values()))))) if pairs else 0,
        "n_pairs": int(n_pairs),
        "hospitals": sorted(pairs),
        "pairs": "own val scans" if scans.info.get("split") == "val" else settings.pairs,
        "data": scans.info,
        **{k: clean.get(k) for k in ("clean_accuracy", "clean_accuracy_defended")},
        **decision_metrics(scans, clean_preds, seed=settings.seed),
        "robust_accuracy_undefended": headline.get("robust_accuracy_undefended"),
        "robust_accuracy_defended": headline.get("robust_accuracy_defended"),
        "detection_auroc": headline.get("detection_auroc"),
        "false_positive_rate": clean.get("false_positive_rate"),
        "true_positive_rate": headline.get("true_positive_rate"),
        "attack": headline.get("label", "none"),
        "clean": clean,
        "attacks": attacks_out,
        "ablations": _ablations(clean, attacks_out, settings),
        "per_hospital": per_hospital,
        "defence": {"purify": settings.purify, "t_min": pipe.t_min, "t_max": pipe.t_max,
                    "ddim_steps": pipe.ddim_steps, "score": pipe.detector_config.get("score"),
                    "score_repeats": pipe.detector_config.get("score_repeats"),
                    "target_fpr": pipe.detector_config.get("target_fpr"),
                    "thresholds": {str(h): pipe.threshold(h) for h in sorted(pairs)}},
        "settings": {k: (_relative(v) if k == "transfer_from" and v else v)
                     for k, v in asdict(settings).items() if k != "progress"},
        "seeds": {"attack": settings.seed, "purifier": seeds, "subset": settings.seed, "pairs": settings.seed},
        "timings_s": timings,
        "seconds_per_pair": round(total / max(n_pairs, 1), 4),
        "purifications": defence.purified_count,
        "model": _model_info(pipe, settings),
        "environment": environment(device),
        "git": git_commit(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return results


@torch.no_grad()
def _type_predictions(model, x: torch.Tensor, batch_size: int) -> np.ndarray | None:
    if not hasattr(model, "tumour_type_log_proba"):
        return None
    out = []
    for i in range(0, len(x), batch_size):
        logp = model.tumour_type_log_proba(x[i:i + batch_size])
        if logp is None:
            return None
        out.append(logp.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def decision_metrics(scans: ScanSet, clean_preds: dict[int, tuple], seed: int = 0, n_boot: int = 1000) -> dict:
    """Undefended clean decisions pooled over every (hospital, scan) pair: balanced accuracy, sensitivity,
    specificity, per class and per source, with 95% intervals from a bootstrap over duplicate groups / patients
    (never over slices); tumour-type accuracy on the tumour scans whose type is known."""
    from medfedpure.metrics import breakdown

    if not clean_preds:
        return {}
    idx = np.concatenate([v[0] for v in clean_preds.values()])
    pred = np.concatenate([v[1] for v in clean_preds.values()])
    y, groups, source = scans.labels[idx], scans.groups[idx], scans.source[idx].astype(str)
    overall = breakdown(pred, y, groups, None, n_boot, seed)["all"]
    per_source = breakdown(pred, y, groups, source, n_boot, seed) if len(set(source.tolist()) - {""}) else {}
    out = {"balanced_accuracy": overall["balanced_accuracy"], "sensitivity": overall["sensitivity"],
           "specificity": overall["specificity"], "decision": overall, "per_source": per_source,
           "per_class": {"tumour": {"n": overall["n_tumour"], "recall": overall["sensitivity"]},
                         "no_tumour": {"n": overall["n_no_tumour"], "recall": overall["specificity"]}}}
    types = [v[2] for v in clean_preds.values()]
    if all(t is not None for t in types):
        t_pred, t_true = np.concatenate(types), scans.tumour_type[idx]
        known = t_true >= 0
        out["tumour_type_accuracy"] = float((t_pred[known] == t_true[known]).mean()) if known.any() else None
        out["tumour_type_n"] = int(known.sum())
        if known.any():
            from medfedpure.config import TUMOUR_TYPES

            out["tumour_type_per_class"] = {
                name: float((t_pred[known & (t_true == k)] == k).mean())
                for k, name in enumerate(TUMOUR_TYPES) if (known & (t_true == k)).any()}
    return out


def _target_text(name: str, settings: EvalSettings) -> str:
    if name == "adaptive":
        grads = "BPDA" if settings.gradient == "bpda" else "full gradients"
        return f"whole defence (MAE score + purifier, EOT, {grads})"
    if name == "eotpgd":
        return "defended classifier, purify always (EOT over purifier noise)"
    if settings.transfer_from:
        return f"transfer from {_relative(settings.transfer_from)}"
    return "classifier only (paper protocol)"


def _ablations(clean: dict, attacks_out: list[dict], settings: EvalSettings) -> dict:
    first = attacks_out[0] if attacks_out else {}
    out = {
        "no_defence": {"clean_accuracy": clean.get("clean_accuracy"),
                       "robust_accuracy": first.get("robust_accuracy_undefended")},
        f"defence_purify_{settings.purify}": {"clean_accuracy": clean.get("clean_accuracy_defended"),
                                              "robust_accuracy": first.get("robust_accuracy_defended")},
        "detect_and_reject": {
            "clean_rejection_rate": clean.get("clean_rejection_rate"),
            "clean_accuracy_on_accepted": clean.get("clean_accuracy_on_accepted"),
            "adversarial_rejection_rate": first.get("adversarial_rejection_rate"),
            "robust_accuracy_on_accepted": first.get("robust_accuracy_on_accepted"),
            "robust_accuracy_rejected_counts_as_stopped": first.get("reject_robust_accuracy")},
    }
    if settings.ablations:
        out["purify_always"] = {"clean_accuracy": clean.get("always_clean_accuracy_defended"),
                                "robust_accuracy": first.get("always_robust_accuracy_defended")}
        out["fixed_t_star_t_max"] = {"clean_accuracy": clean.get("fixed_t_clean_accuracy_defended"),
                                     "robust_accuracy": first.get("fixed_t_robust_accuracy_defended")}
        out["adaptive_t_star"] = out[f"defence_purify_{settings.purify}"] if settings.purify == "flagged" else None
    return out


# --------------------------------------------------------------------------------------------- provenance
def _relative(text) -> str:
    """Strip this machine's absolute repository/working-directory prefixes from a description."""
    text = str(text)
    for base in sorted({str(REPO_ROOT), str(Path.cwd())}, key=len, reverse=True):
        text = text.replace(base + "/", "").replace(base, ".")
    return text.replace(str(REPO_ROOT.parent) + "/", "../")


def _model_info(pipe, settings: EvalSettings) -> dict:
    source = getattr(pipe, "source", None)
    info = {"description": _relative(pipe.source_description),
            "origin": getattr(source, "origin", None), "repo_id": getattr(source, "repo_id", None),
            "revision": getattr(source, "revision", None), "hospitals": pipe.hospitals}
    if getattr(pipe, "classifier_source", None):
        info["classifier_source"] = _relative(pipe.classifier_source)
    if settings.transfer_from:
        info["attack_source"] = _relative(settings.transfer_from)
    return info


def environment(device=None) -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("torch", "torchvision", "torchattacks", "flwr", "diffusers", "numpy", "safetensors",
                "huggingface-hub", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "machine": platform.machine(), "device": str(device) if device is not None else None,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "packages": versions}


def git_commit() -> dict:
    """{"commit": HEAD or None, "dirty": bool or None} (read-only git calls)."""
    def _git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(results: dict, out_dir) -> Path:
    """results.json + RESULTS.md in `out_dir`."""
    import json

    from medfedpure.report import results_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default, allow_nan=False) + "\n")
    (out / "RESULTS.md").write_text(results_markdown(results))
    return path

