"""How often the out-of-distribution check trips on clean scans, and what it says about things that are not scans.

    python scripts/ood_report.py --model pretrained --data ../shared/data [--out reports]

Clean: the validation scans (where the threshold was set) and the test scans (never used), per source. Probes:
an all-black frame, uniform and Gaussian noise, a photograph (matplotlib's sample `grace_hopper.jpg`), DICOM
slices of other body parts and modalities shipped with pydicom, and crops of test scans. Writes reports/ood.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _probes(size: int, test_images: np.ndarray) -> dict[str, tuple[np.ndarray, float | None]]:
    """name -> (image, the file's colour share or None for an image made here)."""
    import matplotlib
    import pydicom.data

    from medfedpure.io import read_scan

    rng = np.random.default_rng(0)
    arrays = {"all-black frame": np.zeros((size, size), np.float32),
           "uniform noise": rng.random((size, size)).astype(np.float32),
           "Gaussian noise around grey": np.clip(0.5 + 0.15 * rng.standard_normal((size, size)), 0, 1).astype(np.float32),
           "smooth gradient": np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))}
    out = {k: (v, None) for k, v in arrays.items()}
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if photo.is_file():
        scan = read_scan(photo, size=size)
        out["photograph (grace_hopper.jpg)"] = (scan.image, scan.meta["colour_fraction"])
        out["the same photograph in grayscale"] = (scan.image, 0.0)
    dicom_dir = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
    for name, label in (("CT_small.dcm", "CT slice (pydicom CT_small.dcm)"),
                        ("liver_1frame.dcm", "liver CT (pydicom liver_1frame.dcm)"),
                        ("MR_small.dcm", "small MR slice (pydicom MR_small.dcm)")):
        if (dicom_dir / name).is_file():
            scan = read_scan(dicom_dir / name, size=size)
            out[label] = (scan.image, scan.meta["colour_fraction"])
    # an extreme crop: the centre quarter of a test scan blown up to full size
    from PIL import Image

    for k in range(2):
        img = test_images[k].astype(np.float32) / 255.0
        c = img[size // 2 - size // 8: size // 2 + size // 8, size // 2 - size // 8: size // 2 + size // 8]
        out[f"extreme crop of test scan {k + 1} (centre 1/16)"] = (np.asarray(
            Image.fromarray(c).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32), None)
    return out


def _colour_shares(data: str, split_csv: Path) -> dict:
    """"source/split" -> files, the largest colour share, files over COLOUR_MAX: read from every data file."""
    from medfedpure.data import read_split
    from medfedpure.io import read_scan
    from medfedpure.ood import COLOUR_MAX

    out: dict = {}
    for row in read_split(split_csv):
        share = read_scan(Path(data) / row.path, size=None).meta.get("colour_fraction") or 0.0
        r = out.setdefault(f"{row.source.split(':')[0]}/{row.split}", {"n": 0, "max": 0.0, "over": 0})
        r["n"] += 1
        r["max"] = max(r["max"], share)
        r["over"] += share > COLOUR_MAX
    return out


def main() -> int:
    import torch

    from medfedpure.evaluation import load_scans
    from medfedpure.io import COLOUR_SPREAD
    from medfedpure.ood import COLOUR_MAX, describe_levels
    from medfedpure.pipeline import MedFedPure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pretrained")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="reports")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MedFedPure.from_pretrained(args.model, device="cpu")
    if pipe.ood is None:
        print("error: this checkpoint has no OOD check (run scripts/fit_ood.py)", file=sys.stderr)
        return 2
    split_csv = Path(pipe.source.path) / "split.csv"
    res: dict = {"threshold": pipe.ood.threshold, "clean": {}, "probes": {}}
    for split in ("val", "test"):
        scans = load_scans(args.data, split, split_csv)
        ok, score = pipe.ood.check(pipe.classifier, scans.tensor(np.arange(len(scans))))
        per = {}
        for src in sorted(set(scans.source.astype(str).tolist())):
            m = scans.source.astype(str) == src
            per[src] = {"n": int(m.sum()), "flagged": int((~ok[m]).sum())}
        res["clean"][split] = {"n": len(scans), "flagged": int((~ok).sum()), "rate": float((~ok).mean()),
                               "per_source": per, "score_quantiles": [float(q) for q in np.quantile(score, [.5, .99, 1])]}
        if split == "test":
            test_images = scans.images
    probes = _probes(pipe.classifier_size if hasattr(pipe, "classifier_size") else 128, test_images)
    x = torch.from_numpy(np.stack([image for image, _ in probes.values()]))[:, None]
    _, score, why = pipe.ood.verdicts(pipe.classifier, x, colours=[colour for _, colour in probes.values()])
    probs = pipe.classifier_for(0)(x).exp()[:, 1].detach().numpy()
    for (name, (_, colour)), w, s, pt in zip(probes.items(), why, score, probs):
        res["probes"][name] = {"in_distribution": w is None, "reason": w, "score": float(s), "colour_fraction": colour,
                               "p_tumour_hospital0": float(pt)}
    res["colour"] = _colour_shares(args.data, split_csv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ood.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Out-of-distribution check", "", f"Command: `python scripts/ood_report.py --model {args.model} "
             f"--data {args.data}`. Score: the largest of {len(pipe.ood.levels)} Mahalanobis distances "
             f"({describe_levels(pipe.ood.levels)}), each divided by "
             "its threshold (`medfedpure/ood.py`): above 1.0 is out of distribution; a flat frame is out whatever "
             "its score. Levels chosen in [ood_candidates.md](ood_candidates.md); thresholds set on the validation "
             "scans only; the test scans were not used to choose anything.", "",
             "| clean scans | n | called out of distribution |", "|---|---|---|"]
    for split, r in res["clean"].items():
        lines.append(f"| {split} (all) | {r['n']} | {r['flagged']} ({100 * r['rate']:.2f}%) |")
        for src, q in r["per_source"].items():
            lines.append(f"| {split}: {src} | {q['n']} | {q['flagged']} ({100 * q['flagged'] / max(q['n'], 1):.2f}%) |")
    lines += ["", "| probe | score | file's colour share | verdict | p(tumour), hospital 0, undefended |",
              "|---|---|---|---|---|"]
    for name, r in res["probes"].items():
        verdict = "in distribution" if r["in_distribution"] else f"OUT of distribution ({r['reason']})"
        colour = "" if r["colour_fraction"] is None else f"{100 * r['colour_fraction']:.1f}%"
        lines.append(f"| {name} | {r['score']:.2f} | {colour} | {verdict} | {r['p_tumour_hospital0']:.3f} |")
    lines += ["", f"A file with more than {100 * COLOUR_MAX:.0f}% of its pixels in colour (channels more than "
              f"{round(COLOUR_SPREAD * 255)}/255 apart) is a colour picture, whatever its features' score. The data "
              "files' colour shares (every split; the limit was set from the training and validation files' "
              "maximum, before this table was made):", "",
              "| source | split | files | max colour share | files over the limit |", "|---|---|---|---|---|"]
    for key, r in sorted(res["colour"].items()):
        src, split = key.split("/")
        lines.append(f"| {src} | {split} | {r['n']} | {100 * r['max']:.1f}% | {r['over']} |")
    (Path(args.out) / "ood.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
