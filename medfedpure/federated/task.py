"""What the Flower apps share: building each model from its config, a hospital's data, calibration."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from medfedpure import detector
from medfedpure.models.classifier import build_classifier
from medfedpure.models.mae import MaskedAutoencoder, build_mae
from medfedpure.models.purifier import DiffusionPurifier, FFDNetPurifier, build_unet


def build_model(kind: str, config: dict):
    if kind == "classifier":
        return build_classifier(config)
    if kind == "mae":
        return build_mae(config)
    if kind == "purifier":
        if is_ffdnet(config):
            return build_ffdnet_purifier(config)
        return DiffusionPurifier(build_unet(**{k: v for k, v in config.items() if k != "arch"}))
    raise ValueError(f"unknown model kind {kind!r}")


def is_ffdnet(config: dict) -> bool:
    """A purifier model-config that asks for the FFDNet denoiser ({"arch": "ffdnet"}) instead of the DDPM."""
    return str(config.get("arch", "ddpm")) == "ffdnet"


def build_ffdnet_purifier(config: dict) -> FFDNetPurifier:
    """model-config {"arch": "ffdnet", "pretrained": true, "sigma_scale": ..., "nc": ..., "nb": ...}."""
    from medfedpure.models.ffdnet import DEFAULT_SIGMA_SCALE, FFDNET_ARGS, build_ffdnet

    args = {k: int(config[k]) for k in FFDNET_ARGS if k in config}
    net = build_ffdnet(pretrained=bool(config.get("pretrained", True)),
                       sigma_scale=float(config.get("sigma_scale", DEFAULT_SIGMA_SCALE)), **args)
    return FFDNetPurifier(net)


def shared_state(model) -> dict[str, torch.Tensor]:
    """What a hospital sends to the server: everything but personal layers and BN batch counters."""
    state = model.shared_state() if hasattr(model, "shared_state") else model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items() if not k.endswith("num_batches_tracked")}


@dataclass
class HospitalData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    train_types: torch.Tensor | None = None  # tumour type index per training scan, -1 unknown / no tumour
    train_sources: torch.Tensor | None = None  # source index per training scan (for balanced sampling)


@functools.lru_cache(maxsize=2)
def _cache(path: str):
    from medfedpure.data import load_cache

    return load_cache(path)


def hospital_data(path: str, hospital: int, cfg: dict, with_test: bool = False) -> HospitalData:
    if not path:
        raise ValueError("no data-path: start the SuperNode with --node-config \"data-path=... hospital=N\"")
    cache = _cache(path)
    train_x, train_y = cache.select("train", hospital)
    val_x, val_y = cache.select("val", hospital)
    if cfg["shift"]:
        from medfedpure.data import apply_acquisition_shift, hospital_shift

        params = hospital_shift(hospital, int(cfg["seed"]))
        gen = np.random.default_rng(int(cfg["seed"]) + hospital)
        train_x = torch.as_tensor(apply_acquisition_shift(train_x.numpy(), params, gen))
        val_x = torch.as_tensor(apply_acquisition_shift(val_x.numpy(), params, gen))
    data = HospitalData(train_x, train_y, val_x, val_y)
    m = cache.mask("train", hospital)
    data.train_types = torch.from_numpy(cache.tumour_type[m].astype(np.int64))
    names = sorted(set(cache.source.tolist()))
    data.train_sources = torch.tensor([names.index(s) for s in cache.source[m].tolist()], dtype=torch.int64)
    if with_test:
        data.test_x, data.test_y = cache.select("test")
    return data


@torch.no_grad()
def detector_scores(mae: MaskedAutoencoder, images: torch.Tensor, repeats: int, seed: int,
                    device: torch.device | str = "cpu", batch_size: int = 32, statistic: str = "mean_abs_error",
                    mask_ratio: float | None = None, norms: dict | None = None) -> np.ndarray:
    mae.to(device).eval()
    keep = detector.keep_sets_for(mae, repeats, seed, device, mask_ratio=mask_ratio)
    out = []
    for i in range(0, len(images), batch_size):
        out.append(detector.score_scans(mae, images[i:i + batch_size].to(device), keep, statistic,
                                        norms=norms)[2].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def calibration_scans(data: HospitalData, cfg: dict) -> torch.Tensor:
    """The clean scans a hospital calibrates its threshold on (setting `calibration-scans`).

    "val": its held-out validation scans. "train+val": all its clean scans, allowed only for a statistic that
    does not read the trained MAE. Why it matters: a hospital's validation scans come from a few duplicate
    groups, so their 95th percentile misses much of the hospital's spread (see the README, "Detector score").
    """
    which = str(cfg["calibration-scans"])
    if which == "val":
        return data.val_x
    if which == "train+val":
        statistic = str(cfg["score"])
        if detector.reads_mae(statistic):
            raise ValueError(f"calibration-scans=train+val needs a statistic that does not read the trained MAE "
                             f"({', '.join(detector.MODEL_FREE_STATISTICS)}); {statistic!r} fits its training "
                             f"scans, so calibrate it on val")
        return torch.cat([data.train_x, data.val_x])
    raise ValueError(f"unknown calibration-scans {which!r}; choose val or train+val")


def calibrate_hospital(mae: MaskedAutoencoder, scans: torch.Tensor, cfg: dict, device) -> dict:
    ratio = float(cfg["score-mask-ratio"]) if cfg["score-mask-ratio"] else None  # 0: the MAE's own
    scores = detector_scores(mae, scans, int(cfg["score-repeats"]), int(cfg["seed"]), device,
                             statistic=str(cfg["score"]), mask_ratio=ratio,
                             norms=detector.parse_norms(cfg["score-norms"]))
    fpr = float(cfg["target-fpr"])
    threshold = detector.calibrate_threshold(scores, fpr)
    median = float(np.median(scores))
    return {
        "threshold": threshold,
        "scale": max(threshold - median, 1e-6),
        "val-n": int(len(scores)),  # scans it was calibrated on (see calibration-scans)
        "quantiles": [float(q) for q in np.quantile(scores, np.linspace(0, 1, 21))],
        # finer, for the server's pooled threshold (detector.pooled_threshold): a summary, not the scores
        "grid": detector.quantile_grid(scores),
    }
