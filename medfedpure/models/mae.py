"""Masked autoencoder (ViT) for 1-channel scans, after facebookresearch/mae ``models_mae.py``.

The detector scores a scan by how badly the MAE, trained on clean scans only, reconstructs the patches it
could not see. Adversarial noise is high-frequency and unpredictable from the visible patches, so it raises
that error. Pixels stay in [0, 1] (no per-patch normalisation) so the error map is in image units.
"""

from __future__ import annotations


import torch
from torch import nn


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid*grid, dim), as in MAE."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    parts = []
    for pos in (yy.flatten(), xx.flatten()):
        angles = pos[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, L, p*p), patches in row-major order; the grid follows the input's size."""
    n, g = imgs.shape[0], imgs.shape[-1] // p
    return imgs.reshape(n, 1, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, p * p)


def unpatchify(patches: torch.Tensor, p: int) -> torch.Tensor:
    """(N, L, p*p) -> (N, 1, H, W), the inverse of `patchify`."""
    n, g = patches.shape[0], int(round(patches.shape[1] ** 0.5))
    return patches.reshape(n, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(n, 1, g * p, g * p)


def hidden_patch_mse(pred: torch.Tensor, target: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden patches only (the MAE loss); pred, target (N, L, p*p)."""
    masked = torch.ones(target.shape[:2], device=target.device)
    masked.scatter_(1, keep_idx, 0.0)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * masked).sum() / masked.sum()


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    def __init__(self, image_size: int = 128, patch_size: int = 16, embed_dim: int = 192, depth: int = 6,
                 heads: int = 4, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 mask_ratio: float = 0.75):
        super().__init__()
        self.config = dict(arch="vit", image_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                           heads=heads, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                           decoder_heads=decoder_heads, mask_ratio=mask_ratio)
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid ** 2
        self.mask_ratio = mask_ratio
        self.patch_embed = nn.Conv2d(1, embed_dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_dim, self.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size ** 2)
        nn.init.normal_(self.mask_token, std=0.02)

    # imgs: (N, 1, H, W) <-> patches: (N, L, p*p)
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size)

    def random_keep(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Indices of the visible patches, (N, L_keep), a random subset per sample."""
        keep = int(round(self.num_patches * (1 - self.mask_ratio)))
        noise = torch.rand(n, self.num_patches, generator=generator, device="cpu")
        return noise.argsort(dim=1)[:, :keep].to(device)

    def forward(self, imgs: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Reconstruct every patch from the visible ones. Returns patches (N, L, p*p) in pixel units."""
        x = self.patch_embed(imgs * 2 - 1).flatten(2).transpose(1, 2) + self.pos_embed  # (N, L, D)
        x = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        n, dd = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(n, self.num_patches, dd).clone()
        full = full.scatter(1, keep_idx[..., None].expand(-1, -1, dd), x) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            full = blk(full)
        return self.decoder_pred(self.decoder_norm(full))

    def masked_loss(self, imgs: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Training loss: mean squared error on the masked patches only (as in MAE)."""
        return hidden_patch_mse(self.forward(imgs, keep_idx), self.patchify(imgs), keep_idx)


def complementary_keep_sets(num_patches: int, mask_ratio: float, repeats: int, seed: int) -> torch.Tensor:
    """Masks for scoring that hide every patch equally often. Returns (M, L_keep) visible-patch indices.

    Each repeat cuts a seeded permutation of the patches into G disjoint groups. With mask_ratio >= 0.5 each mask
    keeps one group visible (G = 1 / (1 - ratio); 0.75 -> 4 masks, each patch hidden in 3), otherwise each mask
    hides one group (G = 1 / ratio; 0.25 -> 4 masks, each patch hidden in 1). Random masks would leave some
    patches never hidden, and those pixels without a score.
    """
    keep_one = mask_ratio >= 0.5
    groups = round(1 / (1 - mask_ratio)) if keep_one else round(1 / mask_ratio)
    size = num_patches // groups
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(repeats):
        perm = torch.randperm(num_patches, generator=gen)
        for i in range(groups):
            group = perm[i * size:(i + 1) * size]
            rest = torch.cat([perm[:i * size], perm[(i + 1) * size:]])
            sets.append((group if keep_one else rest).sort().values)
    return torch.stack(sets)


# Architecture arguments of the ViT MAE, as recorded in a checkpoint's config (checkpoints before the
# convolutional MAE have no "arch" key: they are all ViTs).
VIT_ARGS = ("image_size", "patch_size", "embed_dim", "depth", "heads", "decoder_dim", "decoder_depth",
            "decoder_heads", "mask_ratio")


def build_mae(config: dict) -> nn.Module:
    """The MAE a config describes: ``arch`` "vit" (default, this module) or "conv" (`conv_mae.py`)."""
    arch = config.get("arch", "vit")
    if arch == "conv":
        from medfedpure.models.conv_mae import CONV_ARGS, ConvMaskedAutoencoder

        return ConvMaskedAutoencoder(**{k: config[k] for k in CONV_ARGS if k in config})
    if arch == "vit":
        return MaskedAutoencoder(**{k: config[k] for k in VIT_ARGS if k in config})
    raise ValueError(f"unknown MAE arch {arch!r}; choose vit or conv")


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["MaskedAutoencoder", "build_mae", "complementary_keep_sets", "sincos_pos_embed", "num_params"]
