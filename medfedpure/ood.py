"""Out-of-distribution check: is this a brain MRI slice like the ones the classifier was trained on?

A blank image, noise, a photograph or a chest X-ray still gets a confident "tumour" / "no tumour" from any
classifier. Before reading a diagnosis we ask two questions:
1. is there an image at all (not flat: an all-black or constant frame)?
2. does the classifier's own feature vector (the shared trunk's, 8 x width values) lie near the training scans?
   The score is the Mahalanobis distance to the nearest class mean under one shared covariance (Lee et al.,
   NeurIPS 2018), fitted on the training scans' features; the threshold is a high quantile of the validation
   scans' scores times a margin, so that very few clean scans trip it (measured on the test split, see
   reports/ood.md).

The fitted statistics are stored in the classifier's safetensors (`ood.means`, `ood.precision`) and its config
(`ood`: threshold, quantile, margin), and travel with the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["OodCheck", "fit_ood", "trunk_features", "FLAT_STD"]

FLAT_STD = 1.0 / 255.0  # below this pixel standard deviation a frame holds no image
PREFIX = "ood."


@torch.no_grad()
def trunk_features(classifier, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, F) trunk features of the shared network (no gate involved)."""
    classifier.eval()
    out = []
    for i in range(0, len(x), batch_size):
        z = classifier.normalise(x[i:i + batch_size])
        out.append(classifier.trunk(z).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class OodCheck:
    def __init__(self, means: torch.Tensor, precision: torch.Tensor, threshold: float):
        self.means = means.float()  # (C, F)
        self.precision = precision.float()  # (F, F)
        self.threshold = float(threshold)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N,) distance to the nearest class mean (sqrt of the Mahalanobis form)."""
        f = features.float().to(self.means.device)
        d = f[:, None, :] - self.means[None]  # (N, C, F)
        m = torch.einsum("ncf,fg,ncg->nc", d, self.precision.to(f.device), d)
        return m.clamp_min(0).min(dim=1).values.sqrt()

    @torch.no_grad()
    def check(self, classifier, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """-> (in_distribution bool (N,), score (N,)); a flat frame is out of distribution whatever its score."""
        s = self.scores(trunk_features(classifier, x)).numpy()
        flat = (x.flatten(1).std(dim=1) < FLAT_STD).cpu().numpy()
        return (s <= self.threshold) & ~flat, s

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {PREFIX + "means": self.means.contiguous(), PREFIX + "precision": self.precision.contiguous()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], config: dict) -> "OodCheck | None":
        if PREFIX + "means" not in state or "ood" not in config:
            return None
        return cls(state[PREFIX + "means"], state[PREFIX + "precision"], config["ood"]["threshold"])


def fit_ood(classifier, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
            quantile: float = 0.999, margin: float = 1.25, shrinkage: float = 0.05) -> tuple[OodCheck, dict]:
    """Fit class means and a shared (shrunk) covariance on training features; threshold from validation scans.

    -> (check, record) where record holds the threshold, its quantile and margin, and the score quantiles.
    """
    f = trunk_features(classifier, train_x).double()
    y = train_y.long()
    classes = sorted(torch.unique(y).tolist())
    means = torch.stack([f[y == c].mean(0) for c in classes])
    centred = f - means[torch.tensor([classes.index(int(c)) for c in y])]
    cov = centred.T @ centred / max(len(f) - len(classes), 1)
    cov = (1 - shrinkage) * cov + shrinkage * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    precision = torch.linalg.inv(cov)
    check = OodCheck(means.float(), precision.float(), 0.0)
    val_scores = check.scores(trunk_features(classifier, val_x)).numpy()
    check.threshold = float(np.quantile(val_scores, quantile) * margin)
    record = {"threshold": check.threshold, "quantile": quantile, "margin": margin, "shrinkage": shrinkage,
              "fitted_on": f"{len(f)} training scans", "calibrated_on": f"{len(val_scores)} validation scans",
              "val_score_quantiles": [float(q) for q in np.quantile(val_scores, [0.5, 0.9, 0.99, 0.999, 1.0])]}
    return check, record
