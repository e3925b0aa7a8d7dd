"""MAE anomaly detector: scores, per-pixel error maps, per-hospital calibration and the adaptive t*."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from medfedpure.models.mae import MaskedAutoencoder, complementary_keep_sets


def keep_sets_for(mae: MaskedAutoencoder, repeats: int, seed: int, device=None,
                  mask_ratio: float | None = None) -> torch.Tensor:
    """Scoring masks; `mask_ratio` defaults to the training ratio (0.75)."""
    ratio = mae.mask_ratio if mask_ratio is None else mask_ratio
    return complementary_keep_sets(mae.num_patches, ratio, repeats, seed).to(device)


def reconstruct(mae: MaskedAutoencoder, x: torch.Tensor, keep_sets: torch.Tensor):
    """Average reconstruction and absolute-error map over the M masks, counting only hidden patches.

    x: (N, 1, H, W) in [0, 1]; keep_sets: (M, L_keep). Returns (recon, error_map), both (N, 1, H, W).
    Differentiable with respect to x (the adaptive attack pushes the score down through it).
    """
    n, m = x.shape[0], keep_sets.shape[0]
    xr = x.repeat_interleave(m, dim=0)                       # (N*M, 1, H, W), masks vary fastest
    keep = keep_sets.repeat(n, 1)                             # (N*M, L_keep)
    pred = mae(xr, keep)                                      # (N*M, L, p*p)
    hidden = torch.ones(n * m, mae.num_patches, device=x.device)
    hidden.scatter_(1, keep, 0.0)
    hidden = hidden.view(n, m, mae.num_patches, 1)
    pred = pred.view(n, m, mae.num_patches, -1)
    weight = hidden.sum(1).clamp_min(1.0)                     # masks in which each patch was hidden
    recon_patches = (pred * hidden).sum(1) / weight
    err_patches = ((pred - mae.patchify(x)[:, None]).abs() * hidden).sum(1) / weight
    return mae.unpatchify(recon_patches).clamp(0, 1), mae.unpatchify(err_patches)


def highpass(image: torch.Tensor) -> torch.Tensor:
    """Image minus its 3x3 local mean: keeps pixel-level detail, removes the smooth content."""
    return image - F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def background_region(x: torch.Tensor, level: float = 0.1, window: int = 5) -> torch.Tensor:
    """1 where a scan's whole `window` x `window` neighbourhood is darker than `level` (air around the head).

    An L-inf perturbation of 0.03 can only move the region's edge (pixels within 0.03 of the level), not empty it.
    """
    return (F.max_pool2d(x, window, stride=1, padding=window // 2) < level).to(x.dtype)


# Per-pixel anomaly maps. A scan's score is the mean of its map over the statistic's region (the whole scan,
# or its background), so the map shown is exactly what is scored.
#   mean_abs_error:         |MAE reconstruction - scan| on hidden patches (the paper's reconstruction error)
#   highpass_abs_residual:  |high-pass(reconstruction - scan)|: the pixel-level part of the residual, which the
#                           MAE (trained on clean scans) cannot reproduce; an L-inf attack's dense perturbation
#                           lives there, while the coarse reconstruction error of clean anatomy is filtered out.
#   background_highpass_residual: the same, only over the background, where a clean scan is smooth and dark and
#                           the MAE reconstructs it so; anatomy's own texture no longer drowns the perturbation.
#   background_highpass:    |high-pass(scan)| over the background, without the MAE: the MAE's patch seams add
#                           noise of their own there (see reports/detector_statistics.md for the comparison).
#   magnet_divergence:      Jensen-Shannon divergence between the hospital classifier on the scan and on its
#                           reconstruction (MagNet): a perturbation the MAE does not reproduce changes the answer.
#   feature_error:          relative distance of the classifier trunk's features of the scan and of its
#                           reconstruction: the same comparison before the heads.
# For the two classifier statistics the map shown is |reconstruction - scan|, the residual the classifier reads.
STATISTICS = ("mean_abs_error", "highpass_abs_residual", "background_highpass_residual", "background_highpass",
              "magnet_divergence", "feature_error")
CLASSIFIER_STATISTICS = ("magnet_divergence", "feature_error")
# Statistics that do not read the trained MAE: a hospital may calibrate them on all its clean scans, training
# scans included, since no weight has seen (and so fits) them. The others must be calibrated on held-out scans.
MODEL_FREE_STATISTICS = ("background_highpass",)


def anomaly_map(x: torch.Tensor, recon: torch.Tensor, error_map: torch.Tensor,
                statistic: str = "mean_abs_error") -> tuple[torch.Tensor, torch.Tensor]:
    """(map, region): the per-pixel anomaly map, zero outside the region the statistic averages over."""
    whole = torch.ones_like(x)
    if statistic == "mean_abs_error":
        return error_map, whole
    if statistic == "highpass_abs_residual":
        return highpass(recon - x).abs(), whole
    if statistic == "background_highpass_residual":
        region = background_region(x)
        return highpass(recon - x).abs() * region, region
    if statistic == "background_highpass":
        region = background_region(x)
        return highpass(x).abs() * region, region
    raise ValueError(f"unknown detector statistic {statistic!r}; choose from {STATISTICS}")


def anomaly_score(score_map: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the anomaly map per scan over its region (default: every pixel), (N,)."""
    if region is None:
        return score_map.flatten(1).mean(1)
    return score_map.flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1.0)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between rows of two log-probability tensors, (N,)."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - np.log(2.0)
    kl = lambda a: (a.exp() * (a - logm)).sum(1)  # noqa: E731
    return 0.5 * (kl(logp) + kl(logq))


def trunk_features(classifier, x: torch.Tensor) -> torch.Tensor:
    """The shared trunk's features of a hospital classifier (HospitalClassifier or the mixture itself)."""
    base = getattr(classifier, "base", classifier)
    return base.trunk(base.normalise(x))


def classifier_score(classifier, x: torch.Tensor, recon: torch.Tensor, statistic: str) -> torch.Tensor:
    if classifier is None:
        raise ValueError(f"detector statistic {statistic!r} reads the hospital classifier; pass classifier=")
    if statistic == "magnet_divergence":
        return js_divergence(classifier(x), classifier(recon))
    fx, fr = trunk_features(classifier, x), trunk_features(classifier, recon)
    return (fx - fr).norm(dim=1) / fx.norm(dim=1).clamp_min(1e-6)


def statistic_parts(statistic: str) -> list[str]:
    """The statistics a score adds up: "mean_abs_error+background_highpass" -> both; a single name -> itself."""
    parts = [p.strip() for p in statistic.split("+")]
    for p in parts:
        if p not in STATISTICS:
            raise ValueError(f"unknown detector statistic {p!r}; choose from {STATISTICS} (or a sum a+b)")
    if len(parts) > 1 and any(p in CLASSIFIER_STATISTICS for p in parts):
        raise ValueError("a summed score adds map statistics only; the classifier statistics have no map")
    return parts


def parse_norms(text: str | dict | None) -> dict[str, float]:
    """The setting "mean_abs_error=0.01,background_highpass=0.002" (or a dict) -> {part: median}."""
    if isinstance(text, dict):
        return {k: float(v) for k, v in text.items()}
    norms = {}
    for item in filter(None, (t.strip() for t in str(text or "").split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in STATISTICS or not value:
            raise ValueError(f"score-norms entry {item!r}: expected <statistic>=<median>, statistics {STATISTICS}")
        norms[name.strip()] = float(value)
    return norms


def reads_mae(statistic: str) -> bool:
    return any(p not in MODEL_FREE_STATISTICS for p in statistic_parts(statistic))


def _whole_scan_map(amap: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """A region's map rescaled so that its mean over the whole scan is the region's mean (the part's score)."""
    frac = region.flatten(1).mean(1).clamp_min(1.0 / region[0].numel()).view(-1, 1, 1, 1)
    return amap / frac


def score_scans(mae: MaskedAutoencoder, x: torch.Tensor, keep_sets: torch.Tensor,
                statistic: str = "mean_abs_error", classifier=None, norms: dict | None = None):
    """(reconstruction, anomaly map, score) for x (N, 1, H, W) in [0, 1]; differentiable.

    `classifier` (the hospital's model) is needed by the CLASSIFIER_STATISTICS only. A summed score
    ("a+b") divides each part by its `norms` entry (its median on clean validation scans, recorded in the
    detector's config), and its map is the sum of the parts' maps, each rescaled to the whole scan, so the map's
    mean is exactly the score.
    """
    recon, err = reconstruct(mae, x, keep_sets)
    parts = statistic_parts(statistic)
    if parts[0] in CLASSIFIER_STATISTICS:
        return recon, (recon - x).abs(), classifier_score(classifier, x, recon, statistic)
    if len(parts) == 1:
        amap, region = anomaly_map(x, recon, err, statistic)
        return recon, amap, anomaly_score(amap, region)
    missing = [p for p in parts if not (norms or {}).get(p)]
    if missing:
        raise ValueError(f"the summed score {statistic!r} needs norms for {missing} (score-norms)")
    total = 0.0
    for p in parts:
        amap, region = anomaly_map(x, recon, err, p)
        total = total + _whole_scan_map(amap, region) / float(norms[p])
    return recon, total, anomaly_score(total)


def calibrate_threshold(clean_scores: np.ndarray, target_fpr: float = 0.05) -> float:
    """The score that at most `target_fpr` of a hospital's own clean calibration scans exceed.

    The ceil((n + 1)(1 - fpr))-th order statistic (the split-conformal quantile): a new clean scan from the same
    population exceeds it with probability at most `target_fpr`, where the plain n-quantile undershoots on the
    small validation sets of a hospital (59 to 218 scans)."""
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if scores.size == 0:
        raise ValueError("cannot calibrate a threshold without clean calibration scans")
    k = int(np.ceil((scores.size + 1) * (1 - target_fpr))) - 1
    return float(scores[min(max(k, 0), scores.size - 1)])


QUANTILE_GRID = 101  # quantiles a hospital publishes of its clean scores (1% steps): enough for a pooled 95%


def quantile_grid(scores: np.ndarray) -> list[float]:
    """The summary of a hospital's clean scores that `pooled_threshold` reads: QUANTILE_GRID evenly spaced quantiles."""
    return [float(q) for q in np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, QUANTILE_GRID))]


def pooled_threshold(grids: dict, target_fpr: float = 0.05) -> float:
    """The score that at most `target_fpr` of all hospitals' clean calibration scans together exceed.

    `grids`: hospital -> (its clean scores' quantiles at evenly spaced levels 0..1, its number of scans). Only
    these summaries leave a hospital, never a scan or a score list. The pooled CDF is the count-weighted mixture
    of the hospitals' CDFs (each interpolated on its quantile grid); the level is the conformal one, as in
    `calibrate_threshold`. Why pool: every hospital's model meets scans from other hospitals' scanners, and a
    threshold set on one site's scans alone lets the others' clean scans through as "attacked" (up to 32%).
    """
    if not grids:
        raise ValueError("cannot pool a threshold without calibration grids")
    total = sum(int(n) for _, n in grids.values())
    level = min(1.0, (1 - target_fpr) * (total + 1) / total)
    candidates = np.unique(np.concatenate([np.asarray(q, dtype=np.float64) for q, _ in grids.values()]))
    cdf = np.zeros_like(candidates)
    for q, n in grids.values():
        q = np.asarray(q, dtype=np.float64)
        cdf += int(n) * np.interp(candidates, q, np.linspace(0, 1, len(q)))
    cdf /= total
    return float(candidates[min(int(np.searchsorted(cdf, level - 1e-12)), len(candidates) - 1)])


def adaptive_t_star(score: torch.Tensor, threshold: torch.Tensor | float, scale: torch.Tensor | float,
                    t_min: int, t_max: int) -> torch.Tensor:
    """t*(s) = t_min + (t_max - t_min) * clip((s - thr) / scale, 0, 1): monotone in the anomaly score.

    A scan just over its threshold gets the gentlest purification (t_min); one `scale` above it, the strongest
    (t_max). `scale` is calibrated per hospital as the spread of its clean scores (thr - median).
    """
    frac = ((score - threshold) / scale).clamp(0, 1)
    return (t_min + (t_max - t_min) * frac).round().long()
