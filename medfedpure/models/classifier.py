"""Personalised classifier: K ResNet-18 experts mixed by an input-dependent gate.

Inputs are 1-channel scans in [0, 1]; normalisation happens inside the model so attacks work in pixel space.
The experts are what the hospitals share (averaged by the server); the gate is the personal part that never
leaves a hospital. With ``num_experts == 1`` the model is a plain ResNet-18 (the FedAvg / local baselines).
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


def resnet18_1ch(num_classes: int, width: int = 64) -> ResNet:
    """ResNet-18 (torchvision's blocks and layout) with one input channel and a configurable base width."""
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    if width != 64:
        # Rebuild with a narrower trunk: same depth and topology, channels width, 2w, 4w, 8w.
        net = _narrow_resnet18(num_classes, width)
    net.conv1 = nn.Conv2d(1, net.conv1.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def _narrow_resnet18(num_classes: int, width: int) -> ResNet:
    class _NarrowResNet(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes = width
            self.dilation = 1
            self.groups = 1
            self.base_width = 64
            self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
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
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return _NarrowResNet()


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

    def __init__(self, num_classes: int = 2, num_experts: int = 3, width: int = 32, gate_width: int = 16):
        super().__init__()
        self.config = {
            "num_classes": num_classes, "num_experts": num_experts, "width": width, "gate_width": gate_width,
        }
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN))
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD))
        self.experts = nn.ModuleList(resnet18_1ch(num_classes, width) for _ in range(num_experts))
        self.gate = Gate(num_experts, gate_width) if num_experts > 1 else None

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return x.new_ones(x.shape[0], 1)
        return self.gate((x - self.pixel_mean) / self.pixel_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixture(x, self.gate)

    def mixture(self, x: torch.Tensor, gate: Gate | None) -> torch.Tensor:
        """The mixture under a given gate: one set of shared experts serves every hospital's gate."""
        z = (x - self.pixel_mean) / self.pixel_std
        expert_logp = torch.stack([F.log_softmax(e(z), dim=1) for e in self.experts], dim=1)  # (N, K, C)
        if gate is None:
            return expert_logp[:, 0]
        log_gate = torch.log(gate(z).clamp_min(1e-8)).unsqueeze(-1)  # (N, K, 1)
        return torch.logsumexp(log_gate + expert_logp, dim=1)

    # --- what is shared and what stays home -------------------------------------------------------
    def shared_state(self) -> dict[str, torch.Tensor]:
        """Expert weights (and BN statistics): averaged by the server."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(GATE_PREFIX)}

    def personal_state(self) -> dict[str, torch.Tensor]:
        """Gate weights: the hospital's own layer, never sent during training."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(GATE_PREFIX)}


class HospitalClassifier(nn.Module):
    """One hospital's personalised model: the shared experts under that hospital's own gate."""

    def __init__(self, base: MixtureOfExpertsClassifier, gate: Gate | None):
        super().__init__()
        self.base = base
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.mixture(x, self.gate)
