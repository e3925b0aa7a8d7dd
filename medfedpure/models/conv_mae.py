"""Convolutional masked autoencoder: the MAE's task (rebuild hidden patches from the visible ones) by a small U-Net.

Why not only the ViT of `mae.py`: on a 2-core CPU the ViT with 16-px patches trained to an average head (it kept
0.1% of a scan's high-pass detail, and the classifier read its reconstructions at 38%). A U-Net sees the pixels
around every hidden 8-px patch at full resolution, so it inpaints the anatomy that is there instead of a mean
one, and it trains in minutes per epoch on a CPU. It keeps the ViT's interface (``forward(imgs, keep_idx)``
returns patches), so the detector, the scoring masks and the federated training use either unchanged.

Training draws a mask ratio per batch from ``train_mask_ratios`` so that the lower ratio used for scoring (every
patch hidden once, three quarters visible) is one the model has seen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medfedpure.models.mae import hidden_patch_mse, patchify, unpatchify


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    groups = max(1, cout // 8)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.GroupNorm(groups, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class ConvMaskedAutoencoder(nn.Module):
    def __init__(self, image_size: int = 128, patch_size: int = 8, width: int = 24, levels: int = 3,
                 mask_ratio: float = 0.25, train_mask_ratios: tuple[float, float] = (0.25, 0.75),
                 arch: str = "conv"):
        super().__init__()
        if arch != "conv":
            raise ValueError(f"ConvMaskedAutoencoder builds arch 'conv', not {arch!r}")
        self.config = dict(arch="conv", image_size=image_size, patch_size=patch_size, width=width, levels=levels,
                           mask_ratio=mask_ratio, train_mask_ratios=list(train_mask_ratios))
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid ** 2
        self.mask_ratio = mask_ratio            # the scoring ratio (complementary masks)
        self.train_mask_ratios = tuple(train_mask_ratios)
        chans = [width * 2 ** i for i in range(levels)]
        self.stem = _block(2, chans[0])
        self.down = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(levels - 1))
        self.enc = nn.ModuleList(_block(chans[i + 1], chans[i + 1]) for i in range(levels - 1))
        # dilated bottleneck: a hidden patch needs context from beyond its own 8 px
        self.mid = nn.Sequential(_block(chans[-1], chans[-1], dilation=2), _block(chans[-1], chans[-1], dilation=4))
        self.up = nn.ModuleList(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1) for i in reversed(range(levels - 1)))
        self.dec = nn.ModuleList(_block(2 * chans[i], chans[i]) for i in reversed(range(levels - 1)))
        self.head = nn.Conv2d(chans[0], 1, 1)

    # imgs: (N, 1, H, W) <-> patches: (N, L, p*p), as in the ViT MAE
    # Sizes come from the input, not from image_size: training runs on crops, scoring on whole scans.
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size)

    def random_keep(self, n: int, generator: torch.Generator | None = None, device=None,
                    num_patches: int | None = None) -> torch.Tensor:
        """Visible-patch indices (N, L_keep) for training; one ratio per batch from `train_mask_ratios`."""
        total = num_patches or self.num_patches
        lo, hi = self.train_mask_ratios
        ratio = lo + (hi - lo) * float(torch.rand((), generator=generator))
        keep = max(1, int(round(total * (1 - ratio))))
        noise = torch.rand(n, total, generator=generator, device="cpu")
        return noise.argsort(dim=1)[:, :keep].to(device)

    def visible_mask(self, keep_idx: torch.Tensor, grid: int) -> torch.Tensor:
        """(N, 1, H, W): 1 on visible patches, 0 on hidden ones."""
        n = keep_idx.shape[0]
        vis = torch.zeros(n, grid * grid, device=keep_idx.device)
        vis.scatter_(1, keep_idx, 1.0)
        return F.interpolate(vis.view(n, 1, grid, grid), scale_factor=self.patch_size, mode="nearest")

    def forward(self, imgs: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Reconstruct every patch from the visible ones. Returns patches (N, L, p*p) in pixel units."""
        vis = self.visible_mask(keep_idx, imgs.shape[-1] // self.patch_size).to(imgs.dtype)
        h = torch.cat([(imgs * 2 - 1) * vis, vis], dim=1)
        if h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)  # oneDNN's faster convolution layout on CPUs
        h = self.stem(h)
        skips = []
        for down, enc in zip(self.down, self.enc):
            skips.append(h)
            h = enc(down(h))
        h = self.mid(h)
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            h = dec(torch.cat([up(F.interpolate(h, size=skip.shape[-2:], mode="nearest")), skip], dim=1))
        out = (self.head(h) + 1) / 2
        return self.patchify(out)

    def masked_loss(self, imgs: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the hidden patches only (as in MAE)."""
        return hidden_patch_mse(self.forward(imgs, keep_idx), self.patchify(imgs), keep_idx)


CONV_ARGS = ("image_size", "patch_size", "width", "levels", "mask_ratio", "train_mask_ratios", "arch")

__all__ = ["CONV_ARGS", "ConvMaskedAutoencoder"]
