"""Personalised classifier: K experts mixed by an input-dependent gate.

Inputs are 1-channel scans in [0, 1]; normalisation happens inside the model so attacks work in pixel space.
The experts are what the hospitals share (averaged by the server); the gate is the personal part that never
leaves a hospital. With ``num_experts == 1`` the model is a plain ResNet-18 (the FedAvg / local baselines).

Two expert layouts (``expert_type``):
- ``"resnet"``: K full ResNet-18s, as in the paper (K times the compute);
- ``"head"`` (default): one shared ResNet-18 trunk and K expert heads on its features. On the 2-core CPU this
  trains 3.4x faster than three ResNets (285 vs 84 scans/s, width 32, batch 32), which buys the rounds that
  federated training needs (see README, "Design choices").
Trunks (``trunk``): ``"resnet18"`` (from random weights, GroupNorm) or ``"efficientnet_lite0"`` (ImageNet weights,
see models/efficientnet.py, with its own BatchNorm policy ``bn``). ``geometry="head"`` crops every scan to the
head's bounding box and pads it to a square inside the model, so a source's habitual framing (tight crops, wide
black margins) cannot stand for a class; it is differentiable in the pixels, so attacks see the whole model.
For the ResNet, GroupNorm replaces BatchNorm: averaged BatchNorm statistics are wrong for every hospital when their label mixes
differ (measured: a BatchNorm mixture stalled at ~70-84% validation accuracy after 9 rounds), and GroupNorm has
no running statistics to average (Hsieh et al., 2020).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, ResNet

GATE_PREFIX = "gate."
EXPERT_PREFIX = "experts."

# Br35H scans are mostly black background; these are the training-set statistics of the 128-px cache.
PIXEL_MEAN = 0.18
PIXEL_STD = 0.22
# input_norm="scan": each scan is divided by its own bright level (the 99th percentile of its pixels) before
# the dataset statistics apply, so a scanner's gain or an export's windowing does not shift what the network
# sees. The background stays 0. Differentiable (a sort), so attacks still see the whole model.
SCAN_QUANTILE = 0.99
INPUT_NORMS = ("dataset", "scan")
TRUNKS = ("resnet18", "efficientnet_lite0")
GEOMETRIES = ("pad", "head")
# geometry="head": a pixel belongs to the head above HEAD_LEVEL x the scan's bright level; a row or column is in
# the head's box when more than HEAD_SHARE of it does (stray letters and markers do not); HEAD_MARGIN of the
# box's side is kept around it; the box is never smaller than HEAD_MIN_SIDE of the frame.
HEAD_LEVEL, HEAD_SHARE, HEAD_MARGIN, HEAD_MIN_SIDE = 0.1, 0.03, 0.04, 0.3


@torch.no_grad()
def head_boxes(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, 3): the square around each scan's head as (centre x, centre y, half side)
    in grid_sample's [-1, 1] coordinates. A frame with no head (blank) gets the whole frame."""
    n, _, h, w = x.shape
    level = torch.quantile(x.flatten(1), SCAN_QUANTILE, dim=1).clamp_min(0.02).view(-1, 1, 1) * HEAD_LEVEL
    mask = (x[:, 0] > level).float()
    rows, cols = mask.mean(2) > HEAD_SHARE, mask.mean(1) > HEAD_SHARE  # (N, H), (N, W)

    def extent(on: torch.Tensor, size: int):
        any_on = on.any(1)
        first = torch.where(any_on, on.float().argmax(1), torch.zeros_like(any_on, dtype=torch.long))
        last = torch.where(any_on, size - 1 - on.flip(1).float().argmax(1), torch.full_like(first, size - 1))
        return first.float(), last.float() + 1  # pixel edges

    top, bottom = extent(rows, h)
    left, right = extent(cols, w)
    side = torch.maximum(bottom - top, right - left) * (1 + 2 * HEAD_MARGIN)
    side = side.clamp(min=HEAD_MIN_SIDE * max(h, w), max=float(max(h, w)) * (1 + 2 * HEAD_MARGIN))
    cx = (left + right) / w - 1  # pixel centre -> [-1, 1]
    cy = (top + bottom) / h - 1
    return torch.stack([cx, cy, side / max(h, w)], 1)


def crop_to_head(x: torch.Tensor) -> torch.Tensor:
    """Every scan's head box resampled to the full frame (zero outside the scan): the same geometry for all."""
    box = head_boxes(x)
    zero = torch.zeros_like(box[:, 0])
    theta = torch.stack([torch.stack([box[:, 2], zero, box[:, 0]], 1),
                         torch.stack([zero, box[:, 2], box[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


NORMS = {"batch": nn.BatchNorm2d, "group": group_norm}


def resnet18_1ch(num_classes: int, width: int = 64, norm: str = "group") -> ResNet:
    """ResNet-18 (torchvision's blocks and layout): one input channel, base width `width` (w, 2w, 4w, 8w)."""
    norm_layer = NORMS[norm]

    class _ResNet18(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = norm_layer
            self.inplanes = width
            self.dilation = 1
            self.groups = 1
            self.base_width = 64
            self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(BasicBlock, width, 2)
            self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(width * 8, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return _ResNet18()


class ExpertHead(nn.Module):
    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, features // 2), nn.ReLU(inplace=True),
                                 nn.Linear(features // 2, num_classes))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class Gate(nn.Module):
    """Small CNN on a downsampled scan -> softmax weights over the experts (the hospital's personal layer)."""

    def __init__(self, num_experts: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.AvgPool2d(4),  # 128 -> 32 px: the gate needs the gist, not the detail
            nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(width * 2, num_experts),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.net(x), dim=1)


class MixtureOfExpertsClassifier(nn.Module):
    """``forward(x: (N, 1, H, W) in [0, 1]) -> (N, C)`` log-probabilities of the gated mixture.

    p(y|x) = sum_k g_k(x) softmax(f_k(x))_y ; returning log p keeps cross-entropy and attacks exact.
    """

    def __init__(self, num_classes: int = 2, num_experts: int = 3, width: int = 32, gate_width: int = 16,
                 expert_type: str = "head", norm: str = "group", num_types: int = 0, input_norm: str = "dataset",
                 trunk: str = "resnet18", geometry: str = "pad", bn: str = "frozen", pretrained: bool = False):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, not {input_norm!r}")
        if trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, not {trunk!r}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
        if trunk != "resnet18" and expert_type != "head":
            raise ValueError(f"trunk {trunk!r} needs expert_type='head' (one shared trunk)")
        if num_types and expert_type != "head":
            raise ValueError("a tumour-type head (num_types > 0) needs expert_type='head' (a shared trunk)")
        self.config = {"num_classes": num_classes, "num_experts": num_experts, "width": width,
                       "gate_width": gate_width, "expert_type": expert_type, "norm": norm,
                       "num_types": num_types, "input_norm": input_norm}
        if trunk != "resnet18":  # older checkpoints have no such keys: they are the ResNet with padded geometry
            self.config.update({"trunk": trunk, "geometry": geometry, "bn": bn})
        elif geometry != "pad":
            self.config["geometry"] = geometry
        self.input_norm = input_norm
        self.geometry = geometry
        self.trunk_kind = trunk
        mean, std = PIXEL_MEAN, PIXEL_STD
        if trunk == "efficientnet_lite0":
            from medfedpure.models import efficientnet

            mean, std = efficientnet.PIXEL_MEAN, efficientnet.PIXEL_STD
        self.register_buffer("pixel_mean", torch.tensor(mean))
        self.register_buffer("pixel_std", torch.tensor(std))
        if trunk == "efficientnet_lite0":
            self.trunk = efficientnet.EfficientNetTrunk(pretrained=pretrained, bn=bn)
            features = efficientnet.FEATURES
            self.experts = nn.ModuleList(ExpertHead(features, num_classes) for _ in range(num_experts))
        elif expert_type == "head":
            self.trunk = resnet18_1ch(num_classes, width, norm)
            features = self.trunk.fc.in_features
            self.trunk.fc = nn.Identity()
            self.experts = nn.ModuleList(ExpertHead(features, num_classes) for _ in range(num_experts))
        elif expert_type == "resnet":
            self.trunk = None
            self.experts = nn.ModuleList(resnet18_1ch(num_classes, width, norm) for _ in range(num_experts))
        else:
            raise ValueError(f"expert_type must be 'head' or 'resnet', not {expert_type!r}")
        self.gate = Gate(num_experts, gate_width) if num_experts > 1 else None
        # Tumour type (glioma / meningioma / pituitary) from the shared trunk: shown beside the decision, trained
        # only on scans whose source names the type. Shared like the experts; the decision never depends on it.
        self.type_head = ExpertHead(features, num_types) if num_types else None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1] -> the network's input."""
        if self.geometry == "head":
            x = crop_to_head(x)
        if self.input_norm == "scan":
            level = torch.quantile(x.flatten(1), SCAN_QUANTILE, dim=1).clamp_min(0.05).view(-1, 1, 1, 1)
            x = x * (0.6 / level)  # 0.6: the typical bright level of a scan in [0, 1]
        return (x - self.pixel_mean) / self.pixel_std

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return x.new_ones(x.shape[0], 1)
        return self.gate(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixture(x, self.gate)

    def mixture(self, x: torch.Tensor, gate: Gate | None) -> torch.Tensor:
        """The mixture under a given gate: one set of shared experts serves every hospital's gate."""
        return self.mixture_and_type(x, gate)[0]

    def mixture_and_type(self, x: torch.Tensor, gate: Gate | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (decision log-probabilities (N, C), tumour-type logits (N, T) or None), from one trunk pass."""
        z = self.normalise(x)
        return self._heads(z, self.trunk(z) if self.trunk is not None else z, gate)

    def under_gates(self, x: torch.Tensor, gates: dict) -> dict:
        """{key: (log-probabilities, tumour-type logits or None)} of the mixture under each gate, from ONE trunk
        pass (every hospital's answer on a batch costs one forward, not one per hospital)."""
        z = self.normalise(x)
        h = self.trunk(z) if self.trunk is not None else z
        return {k: self._heads(z, h, g) for k, g in gates.items()}

    def mixture_type_and_features(self, x: torch.Tensor, gate: Gate | None):
        """-> (log-probabilities, tumour-type logits or None, {"layer1", "layer2", "trunk"} features of the OOD check),
        all from one trunk pass (the analysis of a scan needs the three; three passes cost ~20 ms on a CPU)."""
        z = self.normalise(x)
        feats = self.trunk_features(z)
        logp, types = self._heads(z, feats["trunk"], gate)
        return logp, types, feats

    def trunk_features(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """One trunk pass over normalised scans -> {"layer1" / "layer2": (N, 2C) mean and std of the first /
        second stage's maps, "trunk": (N, F) the trunk's output}: the OOD check's trunk levels (no gate)."""
        if self.trunk is None:
            raise ValueError("the OOD features need a shared trunk (expert_type='head')")
        if self.trunk_kind != "resnet18":
            maps = self.trunk.stages(z)
            first, low = maps["layer1"], maps["layer2"]
            return {"layer1": torch.cat([first.mean((2, 3)), first.flatten(2).std(2)], 1),
                    "layer2": torch.cat([low.mean((2, 3)), low.flatten(2).std(2)], 1), "trunk": maps["trunk"]}
        t = self.trunk
        first = t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(z)))))
        low = t.layer2(first)
        h = t.avgpool(t.layer4(t.layer3(low))).flatten(1)
        return {"layer1": torch.cat([first.mean((2, 3)), first.flatten(2).std(2)], 1),
                "layer2": torch.cat([low.mean((2, 3)), low.flatten(2).std(2)], 1), "trunk": h}

    def _heads(self, z: torch.Tensor, h: torch.Tensor, gate: Gate | None):
        expert_logp = torch.stack([F.log_softmax(e(h), dim=1) for e in self.experts], dim=1)  # (N, K, C)
        types = self.type_head(h) if self.type_head is not None else None
        if gate is None:
            return expert_logp[:, 0], types
        log_gate = torch.log(gate(z).clamp_min(1e-8)).unsqueeze(-1)  # (N, K, 1)
        return torch.logsumexp(log_gate + expert_logp, dim=1), types

    def tumour_type_log_proba(self, x: torch.Tensor) -> torch.Tensor | None:
        """Log-probabilities over TUMOUR_TYPES (meaningful when the scan shows a tumour), or None."""
        types = self.mixture_and_type(x, self.gate)[1]
        return None if types is None else F.log_softmax(types, dim=1)

    # --- what is shared and what stays home -------------------------------------------------------
    def is_personal(self, key: str) -> bool:
        """The gate, and with bn="local" (FedBN) the trunk's BatchNorm layers: never sent during training."""
        if key.startswith(GATE_PREFIX):
            return True
        if self.config.get("bn") == "local":
            from medfedpure.models.efficientnet import is_local_bn_key

            return is_local_bn_key(key)
        return False

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Trunk and expert weights: averaged by the server."""
        return {k: v for k, v in self.state_dict().items() if not self.is_personal(k)}

    def personal_state(self) -> dict[str, torch.Tensor]:
        """The hospital's own layers (the gate; FedBN's BatchNorm), never sent during training."""
        return {k: v for k, v in self.state_dict().items() if self.is_personal(k)}


class HospitalClassifier(nn.Module):
    """One hospital's personalised model: the shared experts under that hospital's own gate."""

    def __init__(self, base: MixtureOfExpertsClassifier, gate: Gate | None):
        super().__init__()
        self.base = base
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.mixture(x, self.gate)

    def tumour_type_log_proba(self, x: torch.Tensor) -> torch.Tensor | None:
        types = self.base.mixture_and_type(x, self.gate)[1]
        return None if types is None else F.log_softmax(types, dim=1)


# Architecture arguments of the classifier, as recorded in a checkpoint's config (`MixtureOfExpertsClassifier.config`).
CLASSIFIER_ARGS = ("num_classes", "num_experts", "width", "gate_width", "expert_type", "norm", "num_types",
                   "input_norm", "trunk", "geometry", "bn", "pretrained")


def build_classifier(config: dict) -> MixtureOfExpertsClassifier:
    """The classifier a config describes (``arch`` "moe", the default and only one: the gated mixture)."""
    arch = config.get("arch", "moe")
    if arch != "moe":
        raise ValueError(f"unknown classifier arch {arch!r}; choose moe")
    args = {k: v for k, v in config.items() if k != "arch"}
    unknown = sorted(set(args) - set(CLASSIFIER_ARGS))
    if unknown:
        raise ValueError(f"not classifier arguments: {unknown}; the classifier takes {CLASSIFIER_ARGS}")
    return MixtureOfExpertsClassifier(**args)
