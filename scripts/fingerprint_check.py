"""Does the classifier read a source's fingerprint as the class? Two checks on one split's scans, per model.

    python scripts/fingerprint_check.py --model pretrained [--model runs/old] --split val --data ../shared/data

1. **Source probe.** Within one class, can the source be told from the trunk's pooled features? A logistic
   regression on the features, 5-fold cross-validated over duplicate groups / patients / subjects, scored by
   balanced accuracy (chance: 1 / number of sources). High means the trunk encodes where a scan comes from.
2. **Fingerprint transfer.** Tumour-free scans of the sources that hold both classes re-exported with the look
   of the tumour-only source (`nickparvar_tumour`: the head centred at 85% of a 512 x 512 frame, windowed so its
   99.9th percentile sits at 0.8, JPEG quality 75), and tumour scans re-exported with the look of the healthy-only
   source (`ixi_t1_healthy`: the head resampled to about 2 mm (90 px across), its intensities mapped onto an IXI
   slice's histogram, a lossless PNG). Each file then goes through the app's reader (`read_scan`) as an upload
   would. A model that learnt the fingerprint calls the first "tumour" and the second "no tumour".
The numbers are shares of (hospital model, scan) pairs called right, every hospital's personalised model pooled;
95% intervals bootstrap the groups. Writes reports/fingerprints.md and .json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medfedpure.data import read_split, split_slice_path  # noqa: E402
from medfedpure.io import read_scan  # noqa: E402
from medfedpure.metrics import bootstrap_ci  # noqa: E402

TUMOUR_ONLY, HEALTHY_ONLY = "nickparvar_tumour", "ixi_t1_healthy"


def head_box(a: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the head: rows / columns where more than 3% of pixels exceed 10% of the
    99th percentile (the rule of the classifier's head crop)."""
    m = a > 0.1 * max(float(np.percentile(a, 99)), 0.02)
    rows, cols = np.nonzero(m.mean(1) > 0.03)[0], np.nonzero(m.mean(0) > 0.03)[0]
    if not len(rows) or not len(cols):
        return 0, a.shape[0], 0, a.shape[1]
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))


def _place(head: np.ndarray, frame: int, share: float) -> np.ndarray:
    """The head scaled so its longer side is `share` of a square frame of side `frame`, centred on black."""
    h, w = head.shape
    s = share * frame / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = np.zeros((frame, frame), np.float32)
    top, left = (frame - nh) // 2, (frame - nw) // 2
    out[top:top + nh, left:left + nw] = _resize(head, nh, nw)
    return out


def _encode(a: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def tumour_only_look(a: np.ndarray) -> bytes:
    t, b, l, r = head_box(a)
    x = _place(a[t:b, l:r], 512, 0.85)
    x = x * (0.8 / max(float(np.percentile(x, 99.9)), 1e-3))
    return _encode(x, "JPEG", quality=75)


def healthy_only_look(a: np.ndarray, reference: np.ndarray) -> bytes:
    t, b, l, r = head_box(a)
    x = _place(a[t:b, l:r], 120, 0.75)  # 120 px frame, head about 90 px across: 2 mm voxels
    fg, ref = x > 0.02, np.sort(reference[reference > 0.02])
    if fg.sum() > 16 and len(ref) > 16:
        ranks = np.argsort(np.argsort(x[fg])) / max(int(fg.sum()) - 1, 1)
        x[fg] = ref[np.round(ranks * (len(ref) - 1)).astype(int)]
    return _encode(x, "PNG")


def _read(root: Path, rel: str, size):
    path, plane, index = split_slice_path(rel)
    return read_scan(root / path, size=size, plane=plane, slice_index=index, colour=False).image


def _models(folder: str):
    """(the shared classifier, {hospital: gate})."""
    from medfedpure.pipeline import load_classifier

    clf, gates, _ = load_classifier(Path(folder))
    return clf.eval(), {h: g.eval() for h, g in gates.items()}


def _predict(clf, gates: dict, x) -> np.ndarray:
    """(hospitals, N) predicted labels; one trunk pass per batch serves every hospital's gate."""
    import torch

    rows = {h: [] for h in gates}
    with torch.no_grad():
        for i in range(0, len(x), 64):
            for h, (logp, _) in clf.under_gates(x[i:i + 64], gates).items():
                rows[h].append(logp.argmax(1))
    return np.stack([torch.cat(rows[h]).numpy() for h in sorted(gates)])


def _share(correct: np.ndarray, groups: np.ndarray) -> dict:
    """correct (H, N) booleans -> share right with a group bootstrap interval."""
    c = correct.reshape(-1).astype(int)
    g = np.tile(groups, correct.shape[0])
    lo, hi = bootstrap_ci(c, np.ones_like(c), g, "sensitivity")
    return {"share": float(c.mean()), "ci": [float(lo), float(hi)], "n_scans": int(correct.shape[1])}


def _features(clf, x) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([clf.trunk_features(clf.normalise(x[i:i + 64]))["trunk"]
                          for i in range(0, len(x), 64)]).numpy()


def source_probe(feats: np.ndarray, sources: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Group-wise 5-fold CV of a multinomial logistic regression source <- features; balanced accuracy."""
    import torch

    names = sorted(set(sources.tolist()))
    y = np.array([names.index(s) for s in sources])
    rng = np.random.default_rng(seed)
    ug = np.unique(groups)
    fold_of = dict(zip(ug.tolist(), rng.permutation(len(ug)) % 5))
    folds = np.array([fold_of[g] for g in groups.tolist()])
    pred = np.zeros_like(y)
    for k in range(5):
        tr, te = folds != k, folds == k
        mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
        xt = torch.tensor((feats[tr] - mu) / sd, dtype=torch.float32)
        w = torch.zeros(feats.shape[1], len(names), requires_grad=True)
        b = torch.zeros(len(names), requires_grad=True)
        counts = np.bincount(y[tr], minlength=len(names)).clip(min=1)
        weight = torch.tensor(len(y[tr]) / (len(names) * counts), dtype=torch.float32)
        opt = torch.optim.LBFGS([w, b], max_iter=200)
        yt = torch.tensor(y[tr])

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=weight) + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            pred[te] = (torch.tensor((feats[te] - mu) / sd, dtype=torch.float32) @ w + b).argmax(1).numpy()
    recalls = [float((pred[y == c] == c).mean()) for c in range(len(names)) if (y == c).any()]
    return {"sources": names, "balanced_accuracy": float(np.mean(recalls)), "chance": 1.0 / len(names),
            "n": int(len(y))}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="a classifier folder (or a model folder "
                   "holding classifier/); repeat to compare")
    p.add_argument("--split-csv", default="pretrained/split.csv")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--per-class", type=int, default=120, help="scans per (source, class) at most")
    p.add_argument("--out", default="reports")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    rows = [r for r in read_split(args.split_csv) if r.split == args.split]
    rng = np.random.default_rng(0)
    picked = []
    for key in sorted({(r.source, r.label) for r in rows}):
        sub = [r for r in rows if (r.source, r.label) == key]
        picked += [sub[i] for i in sorted(rng.permutation(len(sub))[:args.per_class])]
    labels = np.array([r.label for r in picked])
    sources = np.array([r.source for r in picked])
    groups = np.array([f"{r.source}:{r.group}" for r in picked])
    x = torch.from_numpy(np.stack([_read(root, r.path, 128) for r in picked])).unsqueeze(1)
    both = ~np.isin(sources, [TUMOUR_ONLY, HEALTHY_ONLY])
    neg, pos = np.flatnonzero(both & (labels == 0)), np.flatnonzero(both & (labels == 1))
    ixi = [i for i in range(len(picked)) if sources[i] == HEALTHY_ONLY]
    looks_neg = torch.from_numpy(np.stack([
        read_scan(tumour_only_look(_read(root, picked[i].path, None)), size=128, colour=False).image
        for i in neg])).unsqueeze(1)
    looks_pos = torch.from_numpy(np.stack([
        read_scan(healthy_only_look(_read(root, picked[i].path, None), x[ixi[k % len(ixi)], 0].numpy()),
                  size=128, colour=False).image for k, i in enumerate(pos)])).unsqueeze(1)
    out = {"split_csv": Path(args.split_csv).name, "split": args.split, "n": len(picked), "models": {}}
    for folder in args.model:
        f = Path(folder)
        f = f / "classifier" if (f / "classifier").is_dir() else f
        clf, models = _models(str(f))
        res = {}
        feats = _features(clf, x)
        res["probe_no_tumour"] = source_probe(feats[labels == 0], sources[labels == 0], groups[labels == 0])
        res["probe_tumour"] = source_probe(feats[labels == 1], sources[labels == 1], groups[labels == 1])
        pn, pl = _predict(clf, models, x[neg]), _predict(clf, models, looks_neg)
        res["tumour_free"] = {"as_is": _share(pn == 0, groups[neg]), "tumour_only_look": _share(pl == 0, groups[neg])}
        pp, pq = _predict(clf, models, x[pos]), _predict(clf, models, looks_pos)
        res["tumour"] = {"as_is": _share(pp == 1, groups[pos]), "healthy_only_look": _share(pq == 1, groups[pos])}
        out["models"][str(folder)] = res
        print(folder, json.dumps(res, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(x[neg[:6], 0].numpy()) + list(x[pos[:6], 0].numpy()), 1),
                           np.concatenate(list(looks_neg[:6, 0].numpy()) + list(looks_pos[:6, 0].numpy()), 1)], 0)
    Image.fromarray(np.rint(grid * 255).astype(np.uint8)).save(Path(args.out) / "fingerprints.png")
    (Path(args.out) / "fingerprints.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    (Path(args.out) / "fingerprints.md").write_text(render(out, args))
    return 0


def _pct(d: dict) -> str:
    return f"{100 * d['share']:.1f}% [{100 * d['ci'][0]:.1f}, {100 * d['ci'][1]:.1f}]"


def render(out: dict, args) -> str:
    cmd = ("python scripts/fingerprint_check.py " + " ".join(f"--model {m}" for m in args.model)
           + f" --split-csv {args.split_csv} --split {args.split}")
    lines = ["# Source fingerprints", "", f"Command: `{cmd}`", "",
             f"{out['n']} {out['split']} scans of `{out['split_csv']}` (at most {args.per_class} per source and "
             "class). Method: the docstring of `scripts/fingerprint_check.py`. Examples: `reports/fingerprints.png` "
             "(top: as they are, six tumour-free then six tumour scans; bottom: the same re-exported with the "
             "tumour-only source's look, then with the healthy-only source's).", "",
             "| Model | source probe, tumour-free (chance) | source probe, tumour (chance) | tumour-free called "
             "tumour-free: as is | ... with the tumour-only look | tumour called tumour: as is | ... with the "
             "healthy-only look |", "|---|---|---|---|---|---|---|"]
    for name, r in out["models"].items():
        a, b = r["probe_no_tumour"], r["probe_tumour"]
        lines.append(f"| `{name}` | {100 * a['balanced_accuracy']:.1f}% ({100 * a['chance']:.0f}%) | "
                     f"{100 * b['balanced_accuracy']:.1f}% ({100 * b['chance']:.0f}%) | "
                     f"{_pct(r['tumour_free']['as_is'])} | {_pct(r['tumour_free']['tumour_only_look'])} | "
                     f"{_pct(r['tumour']['as_is'])} | {_pct(r['tumour']['healthy_only_look'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
