"""Pin the shipped models' outputs on the example scans (tests/golden_values.json), so that a change to reading,
preprocessing or the models that moves any probability, score, threshold or t* by more than 1e-4 fails a test.

    python scripts/write_golden_values.py     # after `release`, when pretrained/ really changed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "golden_values.json"


def golden(pipe) -> dict:
    from medfedpure.io import read_scan

    out = {}
    for f in sorted((ROOT / "assets" / "examples").iterdir()):
        if f.suffix.lower() not in (".jpg", ".png", ".dcm"):
            continue
        scan = read_scan(f)
        for h in (0, max(pipe.hospitals)):
            r = pipe.analyze([scan], hospital=h, purify="flagged", seed=0)[0]
            out[f"{f.name}@{h}"] = {
                "probabilities": r.probabilities, "final_probabilities": r.final_probabilities,
                "score": r.score, "threshold": r.threshold, "t_star": r.t_star,
                "tumour_type_probabilities": r.tumour_type_probabilities, "ood_score": r.ood_score,
            }
    return out


def main() -> int:
    import torch

    from medfedpure.pipeline import MedFedPure

    torch.set_num_threads(2)
    pipe = MedFedPure.from_pretrained(ROOT / "pretrained", device="cpu")
    OUT.write_text(json.dumps(golden(pipe), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
