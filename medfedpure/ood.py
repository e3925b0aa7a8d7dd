"""Out-of-distribution check: is this a brain MRI slice like the ones the classifier was trained on?

A blank image, noise, a photograph or a chest X-ray still gets a confident "tumour" / "no tumour" from any
classifier. Before reading a diagnosis we ask three questions:
1. is there an image at all (not flat: an all-black or constant frame)?
2. is it a grayscale picture? MR slices are; a file with more than COLOUR_MAX of its pixels in colour is a
   photograph, a screenshot or a colour-coded map (the file's colour share is measured by medfedpure.io).
3. do its features lie near the training scans'? Four levels (Lee et al., NeurIPS 2018, use several): texture
   statistics (mean and std of each map) of the classifier trunk's first and second stages, the trunk's output
   (distance to the nearest class mean), and the scan's layout (averaged to 8 x 8: where its bright and dark
   parts lie, which catches extreme crops). Each is a Mahalanobis distance under a shared, shrunk covariance
   fitted on the training scans; each threshold is a high quantile of the validation scans' distances times a
   margin, so that very few clean scans trip it (measured on the test split, see reports/ood.md). The levels
   were chosen by scripts/ood_candidates.py on validation scans, leave-one-source-out rates and development
   probes (reports/ood_candidates.md).

The fitted statistics (`ood.<level>.means`, `ood.<level>.precision`) are stored in `ood.safetensors` beside the
classifier's weights (older checkpoints: inside `model.safetensors`), the thresholds and recipe in its config
(`ood`), and travel with the checkpoint. What it does not catch (a grayscale photograph) is listed in
reports/ood.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["COLOUR_MAX", "FLAT_STD", "LEVELS", "OOD_FILE", "OOD_WORDS", "OodCheck", "describe_levels", "fit_ood",
           "fit_level", "image_features", "trunk_features"]

FLAT_STD = 1.0 / 255.0  # below this pixel standard deviation a frame holds no image
PREFIX = "ood."
OOD_FILE = "ood.safetensors"
LEVELS = ("layer2", "trunk", "layout", "layer1")  # chosen by scripts/ood_candidates.py
CLASS_CONDITIONAL = ("trunk",)  # distance to the nearest class mean; the other levels have one mean
LAYOUT_SIDE = 8
# A file with more than this share of its pixels in colour is a picture, not an MR slice (io.COLOUR_SPREAD says
# what "in colour" means). Set at about 4x the most colourful training or validation file (4.7%, a caption bar),
# so that a new source's coloured annotations still pass; the colour photograph of reports/ood.md has 51%.
COLOUR_MAX = 0.20
# What each out-of-distribution reason means, in the words the app and the command line show.
OOD_WORDS = {"flat": "a blank image: every pixel has the same value",
             "colour": "a colour picture: MR slices are grayscale",
             "features": "unlike every scan the model was trained on"}
LEVEL_WORDS = {"layer1": "texture statistics of the classifier trunk's first stage",
               "layer2": "texture statistics of the trunk's second stage",
               "trunk": "the trunk's output, to the nearest class mean", "layout": "the scan averaged to 8 x 8"}


def describe_levels(levels) -> str:
    """Plain words for a check's levels, for reports and model cards."""
    return "; ".join(f"`{k}`: {LEVEL_WORDS.get(k, k)}" for k in levels)


@torch.no_grad()
def trunk_features(classifier, x: torch.Tensor, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """(N, 1, H, W) in [0, 1] -> {"layer1" / "layer2": (N, 2C) mean and std of the first / second stage's maps
    (texture: catches noise and synthetic patterns), "trunk": (N, F) the trunk's output (content)}; no gate."""
    classifier.eval()
    parts: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        for k, v in classifier.trunk_features(classifier.normalise(x[i:i + batch_size])).items():
            parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def image_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"layout": (N, 64) the scan averaged to 8 x 8}: read off the pixels, no network."""
    return {"layout": F.adaptive_avg_pool2d(x.float(), LAYOUT_SIDE).flatten(1).cpu()}


class OodCheck:
    """One Gaussian per feature level: class-conditional means for the trunk's output, one mean for the others; a
    shared shrunk covariance each. A scan is out of distribution when any level's distance exceeds its threshold.
    `score` is the largest distance / threshold ratio (1.0 = on the threshold)."""

    def __init__(self, levels: dict[str, tuple[torch.Tensor, torch.Tensor, float]]):
        self.levels = {k: (m.float(), p.float(), float(t)) for k, (m, p, t) in levels.items()}
        self.threshold = 1.0

    @staticmethod
    def _distance(f: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        d = f.float()[:, None, :] - means[None]  # (N, C, F)
        return torch.einsum("ncf,fg,ncg->nc", d, precision, d).clamp_min(0).min(dim=1).values.sqrt()

    def level_scores(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self._distance(feats[k], m, p) for k, (m, p, _) in self.levels.items()}

    def scores(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        ratios = [s / self.levels[k][2] for k, s in self.level_scores(feats).items()]
        return torch.stack(ratios).max(0).values

    @torch.no_grad()
    def verdicts(self, classifier, x: torch.Tensor, feats: dict[str, torch.Tensor] | None = None,
                 colours: list[float | None] | None = None):
        """-> (in_distribution bool (N,), score (N,), reasons): why each scan is out of distribution, "flat" (no
        image), "colour" (a colour picture, from each file's colour share in `colours`; None: not known) or
        "features" (unlike the training scans), None when it is in distribution. A flat frame or a colour picture
        is out whatever its score. `feats`: the scans' `trunk_features` when the caller already has them (one
        trunk pass for everything)."""
        feats = trunk_features(classifier, x) if feats is None else {k: v.float().cpu() for k, v in feats.items()}
        s = self.scores({**feats, **image_features(x)}).numpy()
        flat = (x.flatten(1).std(dim=1) < FLAT_STD).cpu().numpy()
        colours = colours or [None] * len(s)
        why = ["flat" if f else "colour" if c is not None and c > COLOUR_MAX else "features" if not v <= self.threshold
               else None for f, c, v in zip(flat, colours, s)]
        return np.array([w is None for w in why]), s, why

    def check(self, classifier, x: torch.Tensor, feats: dict[str, torch.Tensor] | None = None):
        """-> (in_distribution bool (N,), score (N,)) from the pixels alone (no file, so no colour share)."""
        ok, s, _ = self.verdicts(classifier, x, feats)
        return ok, s

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, (m, p, _) in self.levels.items():
            out[f"{PREFIX}{k}.means"] = m.contiguous()
            out[f"{PREFIX}{k}.precision"] = p.contiguous()
        return out

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], config: dict, folder: Path | None = None) -> "OodCheck | None":
        """`state`: the classifier's weights; the statistics are read from `folder`/ood.safetensors when the
        record names that file (refitting the check then leaves the classifier's weights untouched)."""
        rec = config.get("ood")
        if not rec or "levels" not in rec:
            return None
        if rec.get("file"):
            from safetensors.torch import load_file

            if folder is None or not (Path(folder) / rec["file"]).is_file():
                raise FileNotFoundError(f"the OOD check's statistics file {rec['file']} is missing from {folder}")
            state = load_file(str(Path(folder) / rec["file"]))
        levels = {k: (state[f"{PREFIX}{k}.means"], state[f"{PREFIX}{k}.precision"], v["threshold"])
                  for k, v in rec["levels"].items()}
        return cls(levels)


def _gaussian(f: torch.Tensor, y: torch.Tensor | None, shrinkage: float):
    f = f.double()
    if y is None:
        means = f.mean(0, keepdim=True)
        centred = f - means
    else:
        classes = sorted(torch.unique(y).tolist())
        means = torch.stack([f[y == c].mean(0) for c in classes])
        centred = f - means[torch.tensor([classes.index(int(c)) for c in y])]
    cov = centred.T @ centred / max(len(f) - len(means), 1)
    cov = (1 - shrinkage) * cov + shrinkage * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    return means.float(), torch.linalg.inv(cov).float()


def fit_level(train_f: torch.Tensor, train_y: torch.Tensor | None, val_f: torch.Tensor, quantile: float = 0.999,
              margin: float = 1.25, shrinkage: float = 0.1, dtype: torch.dtype = torch.float32):
    """One level: its Gaussian fitted on training features (class-conditional when `train_y` is given), rounded
    to `dtype` (how it is stored), and its threshold = margin x the `quantile` of the validation scans'
    distances. -> (means, precision, threshold, validation distances)."""
    means, precision = _gaussian(train_f, train_y, shrinkage)
    means, precision = means.to(dtype).float(), precision.to(dtype).float()
    d = OodCheck._distance(val_f, means, precision).numpy()
    return means, precision, float(np.quantile(d, quantile) * margin), d


def fit_ood(classifier, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
            quantile: float = 0.999, margin: float = 1.25, shrinkage: float = 0.1,
            levels: tuple[str, ...] = LEVELS, dtype: torch.dtype = torch.float32) -> tuple[OodCheck, dict]:
    """Fit each level (`fit_level`) on the training scans' features, thresholds from the validation scans'.
    -> (check, record for config.json)."""
    tr = {**trunk_features(classifier, train_x), **image_features(train_x)}
    va = {**trunk_features(classifier, val_x), **image_features(val_x)}
    fitted, record = {}, {"quantile": quantile, "margin": margin, "shrinkage": shrinkage,
                          "fitted_on": f"{len(train_x)} training scans", "calibrated_on": f"{len(val_x)} validation scans",
                          "levels": {}}
    for k in levels:
        means, precision, thr, d = fit_level(tr[k], train_y.long() if k in CLASS_CONDITIONAL else None, va[k],
                                             quantile, margin, shrinkage, dtype)
        fitted[k] = (means, precision, thr)
        record["levels"][k] = {"threshold": thr, "val_quantiles": [float(q) for q in np.quantile(d, [0.5, 0.99, 1.0])]}
    record["threshold"] = 1.0
    return OodCheck(fitted), record
