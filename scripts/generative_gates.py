"""Quality gates of the two generative models, on validation scans (never the test split).

    python scripts/generative_gates.py --model pretrained --data ../shared/data [--limit 256] [--out reports]

MAE: PSNR of the full reconstruction (every patch hidden once, by complementary masks), the share of the scan's
high-pass energy it keeps, and the hospital classifier's accuracy on reconstructions against its accuracy on the
scans (gate: within 3 points). Purifier: for each t up to t_max, the classifier's accuracy on the noised x_t and
on the purified scan P(x) (gates: P(x) at least x_t, and within 1 point of clean), and PSNR of P(x) against x.
Each validation scan is classified by its own hospital's model. Writes reports/generative_gates.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def _save_strip(path: Path, x, recon, sources, per_source: int = 2) -> None:
    """Scan | reconstruction | |error| x 4, for a few scans of each source: to look at, not only to measure."""
    from PIL import Image

    rows = []
    for src in sorted(set(sources.tolist())):
        for i in np.flatnonzero(sources == src)[:per_source]:
            a, r = x[i, 0].numpy(), recon[i, 0].numpy()
            rows.append(np.concatenate([a, r, np.clip(np.abs(a - r) * 4, 0, 1)], axis=1))
    Image.fromarray((np.concatenate(rows, axis=0) * 255).astype(np.uint8)).save(path)


def main() -> int:
    import torch

    from medfedpure import detector
    from medfedpure.evaluation import _stratified_pick, load_scans
    from medfedpure.models.mae import complementary_keep_sets
    from medfedpure.pipeline import MedFedPure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--limit", type=int, default=256, help="validation scans (class-stratified, seeded)")
    p.add_argument("--t", default="40,80,120,160", help="diffusion depths to check (up to t_max)")
    p.add_argument("--mae", help="an MAE run folder to gate instead of the model's detector (e.g. runs/cmae/mae)")
    p.add_argument("--purifier", help="a purifier folder to gate instead of the model's (e.g. runs/pur128/purifier)")
    p.add_argument("--ddim-steps", default="", help="DDIM step counts to compare, e.g. 1,2,4 (default: the model's)")
    p.add_argument("--out", default="reports")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    if args.mae:
        from medfedpure.pipeline import load_mae

        pipe.mae = load_mae(Path(args.mae))[0].eval()
    if args.purifier:
        pipe.use_purifier(args.purifier)
    scans = load_scans(args.data, "val", Path(pipe.source.path) / "split.csv")
    keep = _stratified_pick(scans.labels, args.limit, 0)
    x = scans.tensor(keep)
    y = torch.from_numpy(scans.labels[keep])
    home = scans.home[keep]

    def classify(images: torch.Tensor) -> torch.Tensor:
        pred = torch.empty(len(images), dtype=torch.long)
        with torch.no_grad():
            for h in np.unique(home):
                m = torch.from_numpy(home == h)
                pred[m] = pipe.classifier_for(int(h))(images[m]).argmax(1)
        return pred

    clean_pred = classify(x)
    clean_acc = float((clean_pred == y).float().mean())
    # MAE: every patch hidden (complementary masks at the MAE's own ratio: the scoring ratio of the convolutional MAE)
    mae = pipe.mae
    ks = complementary_keep_sets(mae.num_patches, mae.mask_ratio, 1, 0)
    recon = torch.cat([detector.reconstruct(mae, x[i:i + 32], ks)[0] for i in range(0, len(x), 32)])
    hp_x, hp_r = detector.highpass(x), detector.highpass(recon)
    kept_hp = float((hp_r * hp_x).sum() / (hp_x ** 2).sum())  # projection of the reconstruction's detail on the scan's
    recon_acc = float((classify(recon) == y).float().mean())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    _save_strip(Path(args.out) / "mae_reconstructions.png", x, recon, scans.source[keep])
    out = {"n": int(len(x)), "clean_accuracy": clean_acc,
           "mae": {"psnr_full_reconstruction": _psnr(recon.numpy(), x.numpy()), "highpass_energy_kept": kept_hp,
                   "classifier_accuracy_on_reconstructions": recon_acc,
                   "gate_within_3_points": recon_acc >= clean_acc - 0.03},
           "purifier": {}}
    gen = torch.Generator().manual_seed(0)
    step_counts = [int(v) for v in args.ddim_steps.split(",")] if args.ddim_steps else [pipe.ddim_steps]
    for t in [int(v) for v in args.t.split(",")]:
        if t > pipe.t_max:
            continue
        tt = torch.full((len(x),), t, dtype=torch.long)
        noise = torch.randn(x.shape, generator=gen)
        xt = pipe.purifier.add_noise(x * 2 - 1, tt, noise)
        xt01 = ((xt + 1) / 2).clamp(0, 1)
        acc_t = float((classify(xt01) == y).float().mean())
        for steps in step_counts:
            purified = torch.cat([pipe.purifier.purify(x[i:i + 16], tt[i:i + 16], steps=steps,
                                                       generator=torch.Generator().manual_seed(i))
                                  for i in range(0, len(x), 16)])
            acc_p = float((classify(purified) == y).float().mean())
            out["purifier"][f"{t}/{steps}"] = {
                "t": t, "ddim_steps": steps, "accuracy_noised": acc_t, "accuracy_purified": acc_p,
                "psnr_purified": _psnr(purified.numpy(), x.numpy()),
                "gate_at_least_noised": acc_p >= acc_t, "gate_within_1_point": acc_p >= clean_acc - 0.01}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "generative_gates.json").write_text(json.dumps(out, indent=1) + "\n")
    m = out["mae"]
    lines = ["# Quality gates of the generative models (validation scans)", "",
             f"Command: `python scripts/generative_gates.py --model {args.model} --data {args.data} --limit {args.limit} --t {args.t}"
             + (f" --mae {args.mae}" if args.mae else "") + (f" --purifier {args.purifier}" if args.purifier else "") + (f" --ddim-steps {args.ddim_steps}" if args.ddim_steps else "")
             + "`; "
             f"{out['n']} validation scans (class-stratified), each classified by its own hospital's model; clean "
             f"accuracy {100 * clean_acc:.1f}%.", "",
             "| MAE | value | gate |", "|---|---|---|",
             f"| PSNR of the full reconstruction | {m['psnr_full_reconstruction']:.1f} dB | |",
             f"| share of the scan's high-pass energy kept | {100 * m['highpass_energy_kept']:.1f}% | |",
             f"| classifier on reconstructions | {100 * recon_acc:.1f}% | within 3 points of clean: "
             f"{'pass' if m['gate_within_3_points'] else 'FAIL'} |", "",
             "| t | DDIM steps | classifier on x_t | on P(x) | PSNR P(x) vs x | P(x) >= x_t | within 1 point of clean |",
             "|---|---|---|---|---|---|---|"]
    for r in out["purifier"].values():
        lines.append(f"| {r['t']} | {r['ddim_steps']} | {100 * r['accuracy_noised']:.1f}% | {100 * r['accuracy_purified']:.1f}% | "
                     f"{r['psnr_purified']:.1f} dB | {'pass' if r['gate_at_least_noised'] else 'FAIL'} | "
                     f"{'pass' if r['gate_within_1_point'] else 'FAIL'} |")
    (Path(args.out) / "generative_gates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
