"""Write an UNTRAINED, tiny checkpoint folder in the exact pretrained/ layout (for plumbing tests only).

    python scripts/make_tiny_checkpoint.py OUT_DIR
Predictions from it are meaningless; it exists so code paths can be exercised fast without the real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medfedpure.checkpoint_format import ModelConfig, save_model, write_config
from medfedpure.hub import write_manifest
from medfedpure.models.classifier import MixtureOfExpertsClassifier
from medfedpure.models.mae import MaskedAutoencoder
from medfedpure.models.purifier import DiffusionPurifier, build_scheduler, build_unet


def make_tiny_checkpoint(out: Path, hospitals: int = 2) -> Path:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    clf = MixtureOfExpertsClassifier(num_experts=2, width=8, gate_width=4)
    state = {k: v for k, v in clf.state_dict().items() if not k.startswith("gate.") and "num_batches" not in k}
    for h in range(hospitals):
        for k, v in clf.gate.state_dict().items():
            state[f"gates.{h}.{k}"] = v + 0.01 * h
    untrained = {"note": "untrained test model"}
    save_model(out / "classifier", state, ModelConfig("classifier", clf.config, {
        "mode": "moe", "class_names": ["no_tumour", "tumour"], "image_size": 128, "hospitals": list(range(hospitals))},
        untrained))
    mae_cfg = dict(image_size=128, patch_size=16, embed_dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1,
                   decoder_heads=2, mask_ratio=0.75)
    mae = MaskedAutoencoder(**mae_cfg)
    cal = {str(h): {"threshold": 0.2, "scale": 0.05, "val-n": 10, "quantiles": [0.1 + 0.005 * i for i in range(21)]}
           for h in range(hospitals)}
    save_model(out / "detector", mae.state_dict(), ModelConfig("detector", mae.config, {
        "score": "mean_abs_error", "score_repeats": 1, "score_seed": 0, "target_fpr": 0.05, "calibration": cal},
        untrained))
    pur = DiffusionPurifier(build_unet(block_out_channels=(8, 8, 16, 16), norm_num_groups=4))
    pur.unet.save_pretrained(out / "purifier", safe_serialization=True)
    build_scheduler().save_pretrained(out / "purifier")
    write_config(out / "purifier", ModelConfig("purifier", {}, {"t_min": 40, "t_max": 160, "ddim_steps": 2}, untrained))
    (out / "README.md").write_text("# Untrained tiny MedFedPure checkpoint (tests only)\n")
    write_manifest(out)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, help="folder to write (created)")
    print(make_tiny_checkpoint(ap.parse_args().out_dir))
