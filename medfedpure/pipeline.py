"""The MedFedPure pipeline: detect (MAE) -> purify flagged scans (diffusion) -> classify (hospital's model).

    pipe = MedFedPure.from_pretrained("pretrained")          # or a Hub repo id
    result = pipe.analyze(scans, hospital=3)                  # every intermediate, per scan

Everything the app shows and the CLI prints comes from the returned result; nothing recomputes a stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfedpure import checkpoint_format, detector
from medfedpure.device import pick_device
from medfedpure.hub import resolve_model
from medfedpure.models.classifier import Gate, HospitalClassifier, MixtureOfExpertsClassifier
from medfedpure.models.mae import MaskedAutoencoder
from medfedpure.models.purifier import DENOISERS, DiffusionPurifier, FFDNetPurifier

PURIFY_MODES = ("flagged", "always", "never")


@dataclass
class ScanResult:
    """One scan through the pipeline. Images are float32 (H, W) arrays in [0, 1]."""

    name: str
    hospital: int
    input: np.ndarray
    reconstruction: np.ndarray
    error_map: np.ndarray
    score: float
    threshold: float
    flagged: bool
    t_star: int
    purified: np.ndarray | None
    probabilities: list[float]            # classifier on the input
    purified_probabilities: list[float] | None
    final_probabilities: list[float]      # what the defence answers
    prediction: str
    purified_prediction: str | None
    final_prediction: str
    timings_ms: dict = field(default_factory=dict)
    # Tumour type of the scan the final answer was read from (None when the model has no type head): which of
    # TUMOUR_TYPES it looks like, *if* it is a tumour. Shown beside the decision, never instead of it.
    tumour_type: str | None = None
    tumour_type_probabilities: dict[str, float] | None = None
    # Out-of-distribution check (None when the model ships without one): False means the scan is unlike every
    # training scan (blank, noise, a photograph, another body part) and no diagnosis should be read from it.
    in_distribution: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_reason: str | None = None  # "flat", "colour" (a colour picture) or "features"; None when in distribution

    def summary(self) -> dict:
        """JSON-ready, no images."""
        keep = ("name", "hospital", "score", "threshold", "flagged", "t_star", "probabilities",
                "purified_probabilities", "final_probabilities", "prediction", "purified_prediction",
                "final_prediction", "tumour_type", "tumour_type_probabilities", "in_distribution", "ood_score",
                "ood_threshold", "ood_reason", "timings_ms")
        return {k: getattr(self, k) for k in keep}


@dataclass
class AnalysisResult:
    scans: list[ScanResult]
    device: str
    timings_ms: dict

    def __iter__(self):
        return iter(self.scans)

    def __len__(self):
        return len(self.scans)

    def __getitem__(self, i):
        return self.scans[i]


class DefendedClassifier(nn.Module):
    """The whole defence as one differentiable module (for adaptive attacks): x -> log-probabilities.

    Purification is applied with a soft flag: t* follows the score, so a scan under its threshold gets t* = 0 and
    passes unchanged, exactly as in `analyze`. Randomness comes from `generator` (expectation over it = EOT).
    """

    def __init__(self, pipe: "MedFedPure", hospital: int, purify: str = "flagged"):
        super().__init__()
        self.pipe, self.hospital, self.purify_mode = pipe, hospital, purify
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, score = self.pipe.detect(x)
        t_star = self.pipe.t_star(score.detach(), self.hospital, self.purify_mode)
        x = self.pipe.purifier.purify(x, t_star, steps=self.pipe.ddim_steps, generator=self.generator)
        return self.pipe.classifier_for(self.hospital)(x)


class MedFedPure:
    def __init__(self, classifier: MixtureOfExpertsClassifier, gates: dict[int, Gate], mae: MaskedAutoencoder,
                 detector_config: dict, purifier: DiffusionPurifier | FFDNetPurifier, purification: dict, *,
                 device: str | torch.device | None = None, source_description: str = ""):
        self.device = pick_device(device if device is None else str(device))
        self.classifier = classifier.to(self.device).eval()
        self.gates = {h: g.to(self.device).eval() for h, g in gates.items()}
        self._hospital_models = {h: HospitalClassifier(self.classifier, g).eval() for h, g in self.gates.items()}
        self._global_model = HospitalClassifier(self.classifier, self.classifier.gate).eval()
        self.mae = mae.to(self.device).eval()
        self.detector_config = detector_config
        self.calibration = {int(h): c for h, c in detector_config["calibration"].items()}
        self.statistic = detector_config.get("score", "mean_abs_error")
        self.score_norms = detector_config.get("score_norms") or None
        self.keep_sets = detector.keep_sets_for(mae, int(detector_config["score_repeats"]),
                                                int(detector_config["score_seed"]), self.device,
                                                mask_ratio=detector_config.get("score_mask_ratio"))
        self.purifier = purifier.to(self.device).eval()
        self.t_min, self.t_max = int(purification["t_min"]), int(purification["t_max"])
        self.ddim_steps = int(purification.get("ddim_steps", 1))  # reverse steps: 1 for the FFDNet (one call)
        self.class_names = list(getattr(classifier, "class_names", ["no_tumour", "tumour"]))
        self.tumour_types = list(getattr(classifier, "tumour_types", []) or [])
        self.ood = getattr(classifier, "ood_check", None)
        self.source_description = source_description
        for module in (self.classifier, self.mae, self.purifier):
            module.requires_grad_(False)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, revision: str | None = None,
                        device: str | None = None, denoiser: str | None = None) -> "MedFedPure":
        """`denoiser`: "ddpm" or "ffdnet" where the purifier folder holds both (default: its own setting)."""
        resolved = resolve_model(source, revision)
        root = Path(resolved.path)
        classifier, gates, class_names = load_classifier(root / "classifier")
        mae, det_cfg = load_mae(root / "detector")
        purifier, purification = load_purifier(root / "purifier", denoiser)
        pipe = cls(classifier, gates, mae, det_cfg, purifier, purification, device=device,
                   source_description=resolved.description)
        pipe.class_names = class_names
        pipe.source = resolved
        return pipe

    @property
    def hospitals(self) -> list[int]:
        return sorted(self.gates) or sorted(self.calibration)

    def _check_hospital(self, hospital: int) -> int:
        hospital = int(hospital)
        if self.gates and hospital not in self.gates:
            raise ValueError(f"unknown hospital {hospital}; this checkpoint has hospitals {self.hospitals}")
        return hospital

    def classifier_for(self, hospital: int) -> nn.Module:
        """The hospital's personalised classifier: x in [0, 1] -> log-probabilities (differentiable)."""
        return self._hospital_models.get(int(hospital), self._global_model)

    def threshold(self, hospital: int) -> float:
        cal = self.calibration.get(int(hospital))
        if cal is None:  # a hospital without its own calibration uses the most conservative one
            return float(min(c["threshold"] for c in self.calibration.values()))
        return float(cal["threshold"])

    def _scale(self, hospital: int) -> float:
        cal = self.calibration.get(int(hospital)) or next(iter(self.calibration.values()))
        return float(cal["scale"])

    def clean_quantiles(self, hospital: int) -> list[float]:
        cal = self.calibration.get(int(hospital)) or next(iter(self.calibration.values()))
        return list(cal["quantiles"])

    # ----------------------------------------------------------------------------------- stages
    def detect(self, x: torch.Tensor):
        """(reconstruction, anomaly map, score) for a batch (N, 1, H, W) in [0, 1]; differentiable."""
        return detector.score_scans(self.mae, x, self.keep_sets, self.statistic, norms=self.score_norms)

    def t_star(self, score: torch.Tensor, hospital: int, purify: str = "flagged") -> torch.Tensor:
        """Diffusion depth per scan: 0 (no purification) under the threshold unless purify == "always"."""
        thr, scale = self.threshold(hospital), self._scale(hospital)
        t = detector.adaptive_t_star(score, thr, scale, self.t_min, self.t_max)
        if purify == "always":
            return t
        if purify == "never":
            return torch.zeros_like(t)
        return torch.where(score > thr, t, torch.zeros_like(t))

    def purify(self, x: torch.Tensor, t_star: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        return self.purifier.purify(x, t_star, steps=self.ddim_steps, generator=gen)

    def use_purifier(self, folder: str | Path | None = None, denoiser: str | None = None, *,
                     purifier: DiffusionPurifier | FFDNetPurifier | None = None,
                     operating: dict | None = None) -> None:
        """Replace the purifier by the one in `folder` (its denoiser: the folder's setting, or `denoiser`), with
        its own operating settings (t_min, t_max, DDIM steps): a candidate purifier is gated or used exactly as it
        would ship. Or pass a built `purifier` and its `operating` settings (e.g. the pretrained FFDNet)."""
        if purifier is None:
            purifier, operating = load_purifier(Path(folder), denoiser)
        elif operating is None:
            operating = {"t_min": self.t_min, "t_max": self.t_max, "ddim_steps": self.ddim_steps}
        self.purifier = purifier.to(self.device).eval().requires_grad_(False)
        self.t_min, self.t_max = int(operating["t_min"]), int(operating["t_max"])
        self.ddim_steps = int(operating.get("ddim_steps", 1))

    @property
    def denoiser(self) -> str:
        """How the purifier comes back from t*: "ddpm" (DDIM chain) or "ffdnet" (one FFDNet call)."""
        return getattr(self.purifier, "denoiser", "ddpm")

    def defended(self, hospital: int, purify: str = "flagged") -> DefendedClassifier:
        return DefendedClassifier(self, self._check_hospital(hospital), purify)

    # ----------------------------------------------------------------------------------- analyze
    def _as_batch(self, scans) -> tuple[torch.Tensor, list[str], list[float | None]]:
        """-> (x (N, 1, H, W), names, each file's colour share: None for bare arrays and tensors)."""
        if isinstance(scans, torch.Tensor):
            x = scans if scans.dim() == 4 else scans.unsqueeze(1) if scans.dim() == 3 else scans[None, None]
            return x.float(), [f"scan{i}" for i in range(x.shape[0])], [None] * x.shape[0]
        items = scans if isinstance(scans, (list, tuple)) else [scans]
        arrays, names, colours = [], [], []
        for i, item in enumerate(items):
            image = getattr(item, "image", item)
            arrays.append(torch.as_tensor(np.asarray(image, dtype=np.float32)))
            names.append(getattr(item, "name", f"scan{i}"))
            colours.append((getattr(item, "meta", None) or {}).get("colour_fraction"))
        return torch.stack(arrays).unsqueeze(1), names, colours

    @torch.no_grad()
    def analyze(self, scans, hospital: int = 0, *, purify: str = "flagged", seed: int | None = 0,
                colours: list[float | None] | None = None) -> AnalysisResult:
        """Run the three stages on a batch. `scans`: tensor (N,1,H,W)/(N,H,W), array(s) or `io.Scan` objects.
        `colours`: each file's colour share (`Scan.meta["colour_fraction"]`, read from Scan objects by default)
        for the out-of-distribution check, when the scans come as tensors (an attacked copy, say)."""
        if purify not in PURIFY_MODES:
            raise ValueError(f"purify must be one of {PURIFY_MODES}")
        hospital = self._check_hospital(hospital)
        x, names, file_colours = self._as_batch(scans)
        colours = file_colours if colours is None else list(colours)
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("scans must be finite and scaled to [0, 1]")
        x = x.to(self.device)
        timings = {}
        clock = _Clock(self.device)
        model = self.classifier_for(hospital)
        if self.classifier.trunk is not None:  # decision, tumour type and OOD features from one trunk pass
            logp, type_logits, feats = self.classifier.mixture_type_and_features(x, model.gate)
        else:
            logp, type_logits, feats = model(x), None, None
        probs = logp.exp()
        timings["classify"] = clock.lap()
        ood = self.ood.verdicts(self.classifier, x, feats, colours) if self.ood is not None else None
        if ood is not None:
            timings["ood"] = clock.lap()
        recon, err, score = self.detect(x)
        timings["detect"] = clock.lap()
        thr = self.threshold(hospital)
        flagged = score > thr
        t_star = self.t_star(score, hospital, purify)
        purified = probs_after = None
        todo = t_star > 0
        if todo.any():
            purified = x.clone()
            purified[todo] = self.purify(x[todo], t_star[todo], seed)
            timings["purify"] = clock.lap()
            probs_after = probs.clone()
            probs_after[todo] = model(purified[todo]).exp()
            timings["classify_purified"] = clock.lap()
        if purified is not None or type_logits is None:
            type_probs = self.tumour_type_probabilities(purified if purified is not None else x, hospital)
        else:
            type_probs = F.softmax(type_logits, dim=1) if self.tumour_types else None
        n = x.shape[0]
        total = sum(timings.values())
        results = []
        for i in range(n):
            was_purified = bool(todo[i])
            p_before = probs[i].tolist()
            p_after = probs_after[i].tolist() if was_purified else None
            final = p_after if was_purified else p_before
            per_scan = {k: round(v / n, 2) for k, v in timings.items()}
            per_scan["total"] = round(total / n, 2)
            results.append(ScanResult(
                name=names[i], hospital=hospital, input=_np(x[i]), reconstruction=_np(recon[i]),
                error_map=_np(err[i]), score=float(score[i]), threshold=thr, flagged=bool(flagged[i]),
                t_star=int(t_star[i]), purified=_np(purified[i]) if was_purified else None,
                probabilities=p_before, purified_probabilities=p_after, final_probabilities=final,
                prediction=self.class_names[int(np.argmax(p_before))],
                purified_prediction=self.class_names[int(np.argmax(p_after))] if was_purified else None,
                final_prediction=self.class_names[int(np.argmax(final))], timings_ms=per_scan,
                **self._type_fields(type_probs, i), **self._ood_fields(ood, i)))
        return AnalysisResult(results, str(self.device), {k: round(v, 2) for k, v in timings.items()})


    def tumour_type_probabilities(self, x: torch.Tensor, hospital: int) -> torch.Tensor | None:
        """(N, T) probabilities over the model's tumour types, or None for a model without a type head."""
        if not self.tumour_types:
            return None
        logp = self.classifier_for(hospital).tumour_type_log_proba(x)
        return None if logp is None else logp.exp()

    def _ood_fields(self, ood, i: int) -> dict:
        if ood is None:
            return {}
        return {"in_distribution": bool(ood[0][i]), "ood_score": float(ood[1][i]), "ood_threshold": self.ood.threshold,
                "ood_reason": ood[2][i]}

    def _type_fields(self, type_probs: torch.Tensor | None, i: int) -> dict:
        if type_probs is None:
            return {}
        p = type_probs[i].tolist()
        return {"tumour_type": self.tumour_types[int(np.argmax(p))],
                "tumour_type_probabilities": {t: float(v) for t, v in zip(self.tumour_types, p)}}


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        ms, self.t = (now - self.t) * 1000, now
        return ms


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()[0]


# --------------------------------------------------------------------------------------- loaders
def load_classifier(folder: Path):
    """(classifier with its OOD check and tumour types, {hospital: gate}, class names) from a classifier folder."""
    from medfedpure.ood import PREFIX as OOD_PREFIX, OodCheck

    state, config = checkpoint_format.load_model_state(folder, "classifier")
    model = checkpoint_format.build_model(config)
    operating = config.operating
    ood = OodCheck.from_state(state, operating, Path(folder))
    shared = {k: v for k, v in state.items() if not k.startswith("gates.") and not k.startswith(OOD_PREFIX)}
    missing, unexpected = model.load_state_dict(shared, strict=False)
    missing = [k for k in missing if not k.startswith("gate.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"classifier weights do not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    gates = {}
    for h in operating.get("hospitals", []):
        gate = Gate(model.config["num_experts"], model.config["gate_width"])
        prefix = f"gates.{h}."
        gate.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        gates[int(h)] = gate
    model.tumour_types = list(operating.get("tumour_types", [])) if model.config["num_types"] else []
    model.ood_check = ood
    return model.float(), gates, operating.get("class_names", ["no_tumour", "tumour"])


def load_mae(folder: Path):
    """(MAE, the detector's operating settings: score, calibration per hospital, ...) from a detector folder."""
    state, config = checkpoint_format.load_model_state(folder, "detector")
    mae = checkpoint_format.build_model(config)
    mae.load_state_dict({k: v.float() for k, v in state.items()})
    return mae, config.operating


def load_purifier(folder: Path, denoiser: str | None = None):
    """(purifier, its operating settings: t_min, t_max, ddim_steps, denoiser) from a purifier folder.

    The folder holds the diffusion schedule (`scheduler_config.json`) and one or both denoisers: the DDPM's UNet
    (diffusers layout) and the FFDNet (`ffdnet.safetensors`). `denoiser` picks one ("ddpm" | "ffdnet"); by
    default, the folder's setting `denoiser` (absent: "ddpm"). A denoiser's own section of the operating settings
    (e.g. `"ffdnet": {"t_max": 120}`) overrides the shared keys when that denoiser is used.
    """
    from diffusers import DDPMScheduler

    from medfedpure.models.purifier import load_ffdnet_purifier

    folder = Path(folder)
    operating = dict(checkpoint_format.read_config(folder, "purifier").operating)
    denoiser = denoiser or operating.get("denoiser", "ddpm")
    if denoiser not in DENOISERS:
        raise ValueError(f"unknown denoiser {denoiser!r}; choose from {DENOISERS}")
    own = operating.get(denoiser) if isinstance(operating.get(denoiser), dict) else {}
    purification = {**operating, **{k: v for k, v in own.items() if k in ("t_min", "t_max", "ddim_steps")},
                    "denoiser": denoiser}
    scheduler = DDPMScheduler.from_pretrained(folder)
    if denoiser == "ffdnet":
        purification["ddim_steps"] = 1  # one denoiser call
        return load_ffdnet_purifier(folder, scheduler, own), purification
    from diffusers import UNet2DModel

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no DDPM (diffusers config.json and weights); its denoiser is "
                                f"{operating.get('denoiser', 'ddpm')!r}")
    unet = UNet2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
    return DiffusionPurifier(unet.float(), scheduler), purification
