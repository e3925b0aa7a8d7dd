"""Choose the purifier's depth range and DDIM step count on VALIDATION scans (never the test split).

    python scripts/purification_depth.py --model pretrained --cache .cache/cache-<split hash>.npz \
        --ddim-steps 1,2,4 --out reports/purification_depth

For each hospital's own validation scans it crafts PGD on that hospital's classifier (the paper's L-inf 0.015 /
0.003 / 7 steps, and 8/255 / 2/255 / 10 steps), then purifies clean and attacked scans at fixed depths t with each
DDIM step count and reports the hospital's accuracy on each, with a paired bootstrap interval of every step
count's difference from the shipped one. Writes OUT.md and OUT.json.

The rule, fixed before the table is read: another step count replaces the shipped one only if its mean attacked
accuracy over the depths of the shipped range (t_min..t_max) and both budgets is higher by at least 2 points with
a 95% paired bootstrap interval above 0, and its mean clean accuracy over the same depths is not lower by more
than 0.5 points. Then t_max moves to a deeper depth of the table only if there, with the chosen step count, mean
attacked accuracy over both budgets is higher than at the shipped t_max by at least 2 points with a 95% paired
bootstrap interval above 0, and clean accuracy is not lower by more than 2 points (few clean scans are flagged,
but those with the highest scores are purified at t_max).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medfedpure.data import load_cache
from medfedpure.metrics import paired_bootstrap_interval
from medfedpure.pipeline import MedFedPure

DEPTHS = (0, 40, 80, 120, 160, 200, 250)
BUDGETS = {"pgd 0.015": (0.015, 0.003, 7), "pgd 8/255": (8 / 255, 2 / 255, 10)}


MIN_GAIN = 0.02  # attacked accuracy a change must add (its paired interval above 0 as well)
MAX_CLEAN_DROP_STEPS, MAX_CLEAN_DROP_T_MAX = 0.005, 0.02


def per_scan(hits: dict, kinds, steps: int, depths) -> np.ndarray:
    """Each scan's mean correctness over the given kinds ("clean" or budget names) and depths."""
    return np.mean([np.asarray(hits[(k, steps, t)]) for k in kinds for t in depths], axis=0)


def _compare(hits: dict, new: tuple[int, list], old: tuple[int, list], max_clean_drop: float, seed: int) -> dict:
    """One change against the shipped setting, each a (steps, depths) pair: attacked gain over both budgets with
    its paired interval, clean change, and whether the rule passes it."""
    attacked_new, attacked_old = per_scan(hits, BUDGETS, *new), per_scan(hits, BUDGETS, *old)
    gain = float((attacked_new - attacked_old).mean())
    clean = float((per_scan(hits, ["clean"], *new) - per_scan(hits, ["clean"], *old)).mean())
    lo, hi = paired_bootstrap_interval(attacked_new, attacked_old, seed=seed)
    return {"attacked_gain": gain, "interval": [lo, hi], "clean_change": clean,
            "passes": bool(gain >= MIN_GAIN and lo > 0 and clean >= -max_clean_drop)}


def _best(shipped, verdicts: dict):
    """The passing option with the largest attacked gain (the first of equals), else the shipped one."""
    passing = [k for k, v in verdicts.items() if v["passes"]]
    return max(passing, key=lambda k: verdicts[k]["attacked_gain"]) if passing else shipped


def apply_rule(hits: dict, steps_list: list[int], shipped: int, t_min: int, t_max: int, seed: int = 0):
    """The docstring's rule on the per-scan results. -> (step verdicts, chosen steps, t_max verdicts, chosen
    t_max)."""
    in_range = [t for t in DEPTHS if t_min <= t <= t_max]
    verdicts = {steps: _compare(hits, (steps, in_range), (shipped, in_range), MAX_CLEAN_DROP_STEPS, seed)
                for steps in steps_list if steps != shipped}
    chosen = _best(shipped, verdicts)
    depth_verdicts = {t: _compare(hits, (chosen, [t]), (chosen, [t_max]), MAX_CLEAN_DROP_T_MAX, seed)
                      for t in DEPTHS if t > t_max}
    return verdicts, chosen, depth_verdicts, _best(t_max, depth_verdicts)


def _verdict_line(label: str, v: dict) -> str:
    return (f"- {label}: attacked {100 * v['attacked_gain']:+.1f} points ([{100 * v['interval'][0]:+.1f}, "
            f"{100 * v['interval'][1]:+.1f}]), clean {100 * v['clean_change']:+.1f} points: "
            f"{'passes' if v['passes'] else 'does not pass'}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pretrained")
    ap.add_argument("--cache", required=True, help="the preprocessed cache of the models' split")
    ap.add_argument("--out", default="reports/purification_depth")
    ap.add_argument("--per-hospital", type=int, default=12, help="validation scans per hospital (speed)")
    ap.add_argument("--ddim-steps", default="", help="step counts to compare, e.g. 1,2,4 (default: the model's)")
    ap.add_argument("--classifier", help="another classifier behind the same detector and purifier (a candidate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torchattacks

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    if args.classifier:
        from medfedpure.evaluation.defence import with_classifier

        pipe = with_classifier(pipe, args.classifier)
    shipped = pipe.ddim_steps
    steps_list = [int(v) for v in args.ddim_steps.split(",")] if args.ddim_steps else [shipped]
    if shipped not in steps_list:
        steps_list.append(shipped)
    cache = load_cache(args.cache)
    started = time.time()
    # hits[(kind, steps, t)] -> per-scan 0/1 list, kind "clean" or a budget name
    hits: dict[tuple[str, int, int], list[int]] = {}
    n = 0
    for h in pipe.hospitals:
        x, y = cache.select(split="val", hospital=h)
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + h))[: args.per_hospital]
        x, y = x[pick], y[pick]
        model = pipe.classifier_for(h)
        batches = {"clean": x}
        for name, (eps, step, k) in BUDGETS.items():
            batches[name] = torchattacks.PGD(model, eps=eps, alpha=step, steps=k, random_start=True)(x, y)
        n += len(y)
        with torch.no_grad():
            for kind, batch in batches.items():
                for steps in steps_list:
                    pipe.ddim_steps = steps
                    for t in DEPTHS:
                        if t == 0 and steps != steps_list[0]:
                            hits[(kind, steps, 0)] = hits[(kind, steps_list[0], 0)]
                            continue
                        xb = batch if t == 0 else pipe.purify(batch, torch.full((len(y),), t), seed=args.seed + h)
                        hits.setdefault((kind, steps, t), []).extend((model(xb).argmax(1) == y).int().tolist())
        print(f"hospital {h}: {time.time() - started:.0f} s", flush=True)
    pipe.ddim_steps = shipped
    seconds = time.time() - started
    acc = {k: float(np.mean(v)) for k, v in hits.items()}
    in_range = [t for t in DEPTHS if pipe.t_min <= t <= pipe.t_max]  # for the report's rule line
    verdicts, chosen, depth_verdicts, t_max = apply_rule(hits, steps_list, shipped, pipe.t_min, pipe.t_max,
                                                         args.seed)
    kinds = ["clean", *BUDGETS]
    lines = ["# Purification depth and DDIM steps (validation scans only)", "",
             f"Command: `python scripts/purification_depth.py --model {args.model} --cache <cache of the split>"
             + (f" --classifier {args.classifier}" if args.classifier else "")
             + (f" --ddim-steps {args.ddim_steps}" if args.ddim_steps else "")
             + f"`; {n} validation scans ({args.per_hospital} per hospital), each hospital's own classifier, PGD "
             f"crafted on it without the defence; every scan purified at each fixed t; {seconds:.0f} s on this CPU.",
             "", "| DDIM steps | t | " + " | ".join(kinds) + " |", "|---" * (2 + len(kinds)) + "|"]
    for steps in steps_list:
        for t in DEPTHS:
            lines.append(f"| {steps} | {t} | " + " | ".join(f"{100 * acc[(k, steps, t)]:.1f}%" for k in kinds) + " |")
    lines += ["", f"t = 0: no purification. Shipped: {shipped} DDIM steps, t from {pipe.t_min} to {pipe.t_max} "
              "(only flagged scans are purified, at a t* that grows with the score).", "",
              f"Rule fixed beforehand (see the script): over t in {in_range} and both budgets, another step count "
              "must raise attacked accuracy by at least 2 points (95% paired bootstrap interval above 0) and cost "
              "clean accuracy at most 0.5 points.", ""]
    lines += [_verdict_line(f"{steps} DDIM steps against {shipped}", v) for steps, v in verdicts.items()]
    lines += [_verdict_line(f"t_max {t} against {pipe.t_max} ({chosen} DDIM steps)", v)
              for t, v in depth_verdicts.items()]
    lines += ["", f"**By the rule: {chosen} DDIM steps**" + (" (unchanged)" if chosen == shipped else "")
              + f", **t_max {t_max}**" + (" (unchanged)." if t_max == pipe.t_max else ".")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": {"model": args.model, "classifier": args.classifier, "val_scans": n, "seconds": round(seconds), "shipped_steps": shipped,
                  "chosen_steps": chosen, "chosen_t_max": t_max, "t_range": [pipe.t_min, pipe.t_max]},
         "accuracy": {f"{k}|{s}|{t}": v for (k, s, t), v in acc.items()}, "verdicts": verdicts,
         "depth_verdicts": depth_verdicts, "per_scan": {f"{k}|{s}|{t}": v for (k, s, t), v in hits.items()}}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
