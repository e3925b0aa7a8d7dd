"""The defence as the evaluation runs it: the pipeline's own stages, batched, with per-scan purifier noise."""

from __future__ import annotations

import numpy as np
import torch

from medfedpure.attacks import load_source_classifier, purifier_noise
from medfedpure.evaluation.settings import Purify

__all__ = ["with_classifier", "ablation_t_stars", "defence_info"]


def with_classifier(pipe, source, device=None):
    """A copy of `pipe` whose classifier is another one (e.g. the FedAvg baseline), same detector and purifier."""
    from medfedpure.pipeline import MedFedPure

    src = load_source_classifier(source, device or pipe.device)
    new = MedFedPure(src.classifier, {int(h): g for h, g in src.gates.items()}, pipe.mae, pipe.detector_config,
                     pipe.purifier, {"t_min": pipe.t_min, "t_max": pipe.t_max, "ddim_steps": pipe.ddim_steps},
                     device=device or pipe.device, source_description=pipe.source_description)
    new.class_names = pipe.class_names
    new.source = getattr(pipe, "source", None)
    new.classifier_source = str(source)
    return new


class _Defence:
    """The pipeline's stages, batched, with per-scan purifier noise and a cache for clean purifications."""

    def __init__(self, pipe, batch_size: int):
        self.pipe, self.bs = pipe, batch_size
        self.cache: dict = {}
        self.purified_count = 0

    @torch.no_grad()
    def logp(self, model, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x[i:i + self.bs]) for i in range(0, len(x), self.bs)]) if len(x) else \
            torch.zeros(0, 2, device=x.device)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.pipe.detect(x[i:i + self.bs])[2] for i in range(0, len(x), self.bs)]
        return torch.cat(out) if out else torch.zeros(0, device=x.device)

    def _noise(self, names: list[str], seed: int, shape) -> torch.Tensor:
        return purifier_noise(names, seed, shape)

    @torch.no_grad()
    def purify(self, x: torch.Tensor, t: torch.Tensor, names: list[str], seed: int, cache: bool) -> torch.Tensor:
        out = torch.empty_like(x)
        todo = []
        for i, name in enumerate(names):
            hit = self.cache.get((name, int(t[i]), seed)) if cache else None
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)
        for j in range(0, len(todo), self.bs):
            idx = todo[j:j + self.bs]
            xb, tb = x[idx], t[idx]
            noise = self._noise([names[i] for i in idx], seed, xb.shape).to(x.device, x.dtype)
            pur = self.pipe.purifier.purify(xb, tb, steps=self.pipe.ddim_steps, noise=noise)
            self.purified_count += len(idx)
            out[idx] = pur
            if cache:
                for k, i in enumerate(idx):
                    self.cache[(names[i], int(t[i]), seed)] = pur[k].clone()
        return out

    def predict(self, model, x, base_pred, t, names, seed, cache=False) -> torch.Tensor:
        """The defence's answer: the classifier on the purified scan where t* > 0, else on the scan itself."""
        pred = base_pred.clone()
        todo = torch.nonzero(t > 0).flatten()
        if len(todo):
            sel = todo.tolist()
            purified = self.purify(x[todo], t[todo], [names[i] for i in sel], seed, cache)
            pred[todo] = self.logp(model, purified).argmax(1)
        return pred

    def predict_seeds(self, model, x, base_pred, t, names, seeds, cache=False, on_seed=None) -> list[torch.Tensor]:
        """`predict` once per purifier seed; `on_seed(seed)` after each (progress)."""
        preds = []
        for seed in seeds:
            preds.append(self.predict(model, x, base_pred, t, names, seed, cache))
            if on_seed is not None:
                on_seed(seed)
        return preds


def ablation_t_stars(pipe, hospital: int, score: torch.Tensor, flag: torch.Tensor, t: torch.Tensor) -> tuple:
    """The ablations' t*: purify every scan (score-dependent t*), and t* = t_max for every flagged scan."""
    t_fixed = torch.where(flag, torch.full_like(t, pipe.t_max), torch.zeros_like(t))
    return pipe.t_star(score, hospital, Purify.ALWAYS), t_fixed


def defence_info(pipe, settings, hospitals) -> dict:
    """The defence as evaluated: purify mode, denoiser (ddpm | ffdnet), t* range, DDIM steps (1 for the FFDNet's
    single call), the detector's score and thresholds."""
    det = pipe.detector_config
    return {"purify": settings.purify, "denoiser": getattr(pipe.purifier, "denoiser", "ddpm"),
            "t_min": pipe.t_min, "t_max": pipe.t_max, "ddim_steps": pipe.ddim_steps,
            "score": det.get("score"), "score_repeats": det.get("score_repeats"), "target_fpr": det.get("target_fpr"),
            "thresholds": {str(h): pipe.threshold(h) for h in sorted(hospitals)}}


@torch.no_grad()
def _type_predictions(model, x: torch.Tensor, batch_size: int) -> np.ndarray | None:
    if not hasattr(model, "tumour_type_log_proba"):
        return None
    out = []
    for i in range(0, len(x), batch_size):
        logp = model.tumour_type_log_proba(x[i:i + batch_size])
        if logp is None:
            return None
        out.append(logp.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)
