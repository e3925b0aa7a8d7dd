"""Training and evaluation steps: plain functions on tensors, called by the Flower ClientApp and by tests.

Nothing here knows about Flower. Every function takes images as float tensors (N, 1, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from medfedpure.models.mae import MaskedAutoencoder
from medfedpure.models.purifier import DiffusionPurifier


def batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def augment(x: torch.Tensor, generator: torch.Generator, strength: str = "mild") -> torch.Tensor:
    """Label-preserving scan augmentation: flips, small rotation/scale/shift, contrast/gamma, mild noise or blur.

    Noise and blur also make the classifier tolerant of the purifier's small reconstruction artefacts.
    strength="scanner" widens every range and adds what differs between scanners and sources: a smooth bias
    field, lower resolution, crops (zoom), and restyling to another scan's intensity histogram (so that one
    source's look cannot stand for its class), re-windowing (saturated exports) and JPEG re-encoding.
    """
    wide = strength == "scanner"
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731
    if wide:
        x = restyle(x, generator, p=0.3)
    flip = r(n) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    angle = (r(n) - 0.5) * (2 * math.pi * 15 / 360)
    scale = 1 + (r(n) - 0.5) * (0.4 if wide else 0.2)  # > 1 zooms out, < 1 crops into the scan
    shift = (r(n, 2) - 0.5) * (0.16 if wide else 0.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    if wide:
        x = x * bias_field(n, x.shape[-1], generator)
        lowres = (r(n) < 0.25).view(-1, 1, 1, 1)
        side = int(x.shape[-1] * (0.4 + 0.4 * float(r(1))))
        small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        x = torch.where(lowres, F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False), x)
    if wide:
        x = window(x, generator, p=0.2)
    gamma = torch.exp((r(n) - 0.5) * (0.8 if wide else 0.5)).view(-1, 1, 1, 1)
    contrast = (1 + (r(n) - 0.5) * (0.5 if wide else 0.3)).view(-1, 1, 1, 1)
    x = (x.clamp(0, 1) ** gamma) * contrast
    noisy = (r(n) < 0.3).view(-1, 1, 1, 1)
    sigma = (r(n) * (0.04 if wide else 0.03)).view(-1, 1, 1, 1)
    x = torch.where(noisy, x + sigma * torch.randn(x.shape, generator=generator), x)
    blurred = (r(n) < 0.2).view(-1, 1, 1, 1)
    x = torch.where(blurred, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1), x)
    x = x.clamp(0, 1)
    if wide:
        x = reencode(x, generator, p=0.25)
    return x


def window(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability p per scan, re-window it as an export would: the top of its range saturated (clipped at
    a level between its 90th and 99.9th percentile) and rescaled to [0, 1]."""
    n = x.shape[0]
    pick = (torch.rand(n, generator=generator) < p).view(-1, 1, 1, 1)
    q = 0.9 + 0.099 * torch.rand(n, generator=generator)
    level = torch.stack([torch.quantile(x[i].flatten(), float(q[i])) for i in range(n)]).clamp_min(0.05)
    return torch.where(pick, (x / level.view(-1, 1, 1, 1)).clamp(0, 1), x)


def reencode(x: torch.Tensor, generator: torch.Generator, p: float = 0.25) -> torch.Tensor:
    """With probability p per scan, a JPEG round trip at quality 25 to 90: a source's compression is no label."""
    import io

    import numpy as np
    from PIL import Image

    out = x.clone()
    pick = torch.rand(x.shape[0], generator=generator) < p
    quality = torch.randint(25, 91, (x.shape[0],), generator=generator)
    for i in torch.nonzero(pick).flatten().tolist():
        img = Image.fromarray(np.rint(x[i, 0].numpy() * 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality[i]))
        out[i, 0] = torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255.0)
    return out


def bias_field(n: int, size: int, generator: torch.Generator, strength: float = 0.3) -> torch.Tensor:
    """(n, 1, size, size) smooth multiplicative fields in about [1 - strength, 1 + strength] (coil inhomogeneity)."""
    coarse = 1 + strength * (2 * torch.rand(n, 1, 4, 4, generator=generator) - 1)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(0.5, 1.5)


def restyle(x: torch.Tensor, generator: torch.Generator, p: float = 0.3, level: float = 0.02) -> torch.Tensor:
    """With probability p per scan, map its head's intensities onto another scan's (histogram matching).

    Only pixels above `level` (the head) are matched, by rank, to the quantiles of a random other scan of the
    batch; the background stays black. Teaches the classifier that a source's intensity profile is not a label.
    """
    n = x.shape[0]
    if n < 2:
        return x
    pick = torch.rand(n, generator=generator) < p
    partner = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    out = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        a, b = x[i].flatten(), x[partner[i]].flatten()
        fa, fb = a > level, b > level
        if fa.sum() < 16 or fb.sum() < 16:
            continue
        ranks = torch.argsort(torch.argsort(a[fa])).float() / max(int(fa.sum()) - 1, 1)
        ref = torch.sort(b[fb]).values
        idx = (ranks * (len(ref) - 1)).round().long()
        flat = out[i].flatten().clone()
        flat[fa] = ref[idx]
        out[i] = flat.view_as(out[i])
    return out


def stratum_sampling_weights(labels: torch.Tensor, sources: torch.Tensor | None = None,
                             max_ratio: float = 10.0) -> torch.Tensor:
    """Per-scan sampling weights: every class has the same total weight, and within a class every source.

    A hospital whose scans are 80% tumour, or whose tumours all come from one source, then trains on both
    classes and all its sources equally. Weights are capped at `max_ratio` times the mean, so one scan that is
    alone in its class is not drawn for half of every batch.
    """
    labels = labels.long()
    sources = torch.zeros_like(labels) if sources is None else sources.long()
    w = torch.zeros(len(labels), dtype=torch.float64)
    classes = torch.unique(labels)
    for c in classes.tolist():
        in_c = labels == c
        srcs = torch.unique(sources[in_c])
        for s in srcs.tolist():
            m = in_c & (sources == s)
            w[m] = 1.0 / (len(classes) * len(srcs) * int(m.sum()))
    w = w / w.mean()
    return w.clamp(max=max_ratio).float()


def balanced_class_weights(labels: torch.Tensor, num_classes: int, max_weight: float = 10.0) -> torch.Tensor:
    """Loss weights n / (C * n_c), capped: every class counts equally, whatever the hospital's label mix.

    A hospital whose scans are 80% tumour otherwise teaches its gate to say "tumour" by default, which is
    right on its own scans and wrong on a balanced test set (and on the next patient population it sees).
    """
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = len(labels) / (num_classes * counts.clamp(min=1))
    return weights.clamp(max=max_weight)


@dataclass(frozen=True)
class Adversarial:
    """Adversarial fine-tuning of the classifier: `eps` 0 is off."""

    eps: float = 0.0
    fraction: float = 0.5
    steps: int = 3


def pgd_batch(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
              generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD copies of x on `model` (log-probabilities): the project's seeded PGD (`attacks.make_attack`,
    random start, step 2.5 eps / steps), its seed drawn from `generator`. The attack runs the model in eval mode,
    as the defence will; the model's training mode is restored after. Returns detached scans in [0, 1]."""
    from medfedpure.attacks import make_attack  # torchattacks: only when adversarial training is on

    was_training = model.training
    seed = int(torch.randint(2**31, (), generator=generator))
    adv = make_attack("pgd", model, eps=eps, step=2.5 * eps / max(steps, 1), steps=steps, seed=seed)(x, y)
    model.train(was_training)
    return adv


def train_classifier(model, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 1, lr: float = 1e-3,
                     batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu",
                     weight_decay: float = 1e-4, class_weights: torch.Tensor | None = None,
                     sample_weights: torch.Tensor | None = None, tumour_types: torch.Tensor | None = None,
                     type_weight: float = 0.5, augmentation: str = "mild",
                     adversarial: Adversarial = Adversarial()) -> dict:
    """Local training of the whole mixture (experts, gate, tumour-type head). Returns loss, accuracy, count.

    `class_weights` (one per class) reweights the loss, e.g. `balanced_class_weights(labels, C)`;
    `sample_weights` (one per scan) instead draws each epoch's scans with replacement in those proportions
    (`stratum_sampling_weights`). `tumour_types` (index per scan, -1 where unknown) adds `type_weight` x the
    type head's cross-entropy on the scans that have a type (partial labels). `adversarial` (eps > 0) replaces
    the first `fraction` of every batch by PGD copies on the current model (`pgd_batch`).
    """
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    if class_weights is not None:
        class_weights = class_weights.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total, correct, loss_sum = 0, 0, 0.0
    has_types = tumour_types is not None and getattr(model, "type_head", None) is not None
    for _ in range(epochs):
        if sample_weights is not None:
            drawn = torch.multinomial(sample_weights, len(images), replacement=True, generator=gen)
            order = (drawn[i:i + batch_size] for i in range(0, len(drawn), batch_size))
        else:
            order = batches(len(images), batch_size, gen)
        for idx in order:
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = augment(images[idx], gen, augmentation).to(device)
            y = labels[idx].to(device)
            n_adv = round(adversarial.fraction * len(idx)) if adversarial.eps > 0 else 0
            if n_adv:
                eps = adversarial.eps * (0.5 + 0.5 * float(torch.rand((), generator=gen)))
                x = torch.cat([pgd_batch(model, x[:n_adv], y[:n_adv], eps, adversarial.steps, gen), x[n_adv:]])
            logp, type_logits = model.mixture_and_type(x, model.gate) if has_types else (model(x), None)
            loss = F.nll_loss(logp, y, weight=class_weights)
            if type_logits is not None:
                t = tumour_types[idx].to(device)
                known = t >= 0
                if known.any():
                    loss = loss + type_weight * F.cross_entropy(type_logits[known], t[known])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logp.argmax(1) == y).sum().item()
            total += len(idx)
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "num-examples": len(images)}


@torch.no_grad()
def predict_log_proba(model, images: torch.Tensor, *, batch_size: int = 128,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    model.to(device).eval()
    out = [model(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 2)


def evaluate_classifier(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 128,
                        device: torch.device | str = "cpu") -> dict:
    if len(images) == 0:
        return {"loss": 0.0, "accuracy": 0.0, "num-examples": 0}
    logp = predict_log_proba(model, images, batch_size=batch_size, device=device)
    pred = logp.argmax(1)
    recalls = [(pred[labels == c] == c).float().mean().item() for c in torch.unique(labels).tolist()]
    return {
        "loss": F.nll_loss(logp, labels).item(),
        "accuracy": (pred == labels).float().mean().item(),
        "balanced-accuracy": sum(recalls) / len(recalls),
        "num-examples": len(images),
    }


def train_mae(model, images: torch.Tensor, *, epochs: int = 1, lr: float = 1e-3,
              batch_size: int = 32, seed: int = 0, device: torch.device | str = "cpu", crop: int = 0) -> dict:
    """MAE pre-training on clean scans (flips only: the detector must learn what clean scans look like).

    `crop` > 0 (convolutional MAE only): train on random crops aligned to the patch grid, 4x cheaper at 64 px;
    the network is convolutional, so it scores whole scans unchanged.
    """
    if crop and getattr(model, "config", {}).get("arch") != "conv":
        raise ValueError("crop needs the convolutional MAE (model-config arch=conv); the ViT's grid is fixed")
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    total, loss_sum = 0, 0.0
    for _ in range(epochs):
        for idx in batches(len(images), batch_size, gen):
            x = images[idx]
            x = torch.where((torch.rand(len(idx), generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x).to(device)
            if crop:
                p = model.patch_size
                oy, ox = (torch.randint(0, (x.shape[-1] - crop) // p + 1, (2,), generator=gen) * p).tolist()
                x = x[..., oy:oy + crop, ox:ox + crop]
                keep = model.random_keep(len(idx), generator=gen, device=device, num_patches=(crop // p) ** 2)
            else:
                keep = model.random_keep(len(idx), generator=gen, device=device)
            loss = model.masked_loss(x, keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            total += len(idx)
    return {"loss": loss_sum / max(total, 1), "num-examples": len(images)}


@torch.no_grad()
def evaluate_mae(model: MaskedAutoencoder, images: torch.Tensor, *, seed: int = 0, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(seed)
    model.to(device).eval()
    total, loss_sum = 0, 0.0
    for idx in batches(len(images), batch_size, gen, shuffle=False):
        x = images[idx].to(device)
        loss_sum += model.masked_loss(x, model.random_keep(len(idx), generator=gen, device=device)).item() * len(idx)
        total += len(idx)
    return {"loss": loss_sum / max(total, 1), "num-examples": len(images)}


def _denoiser_steps(purifier, params: list, opt, images: torch.Tensor, *, steps: int, batch_size: int, crop: int,
                    timesteps: tuple[int, int], gen: torch.Generator, device, ema_decay: float) -> float:
    """The local loop both purifiers train with: random crops (one window per batch; any 64-px window of a 128-px
    scan contains its centre, where the brain is), flips, t drawn from [timesteps[0], timesteps[1]), the purifier's
    own `training_loss`, clipped steps; with `ema_decay` > 0 the weights end as the EMA of the local iterates.
    Returns the mean loss."""
    ema = [p.detach().clone() for p in params] if ema_decay > 0 else None
    n, size = images.shape[0], images.shape[-1]
    loss_sum = 0.0
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        oy, ox = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
        x = images[idx][..., oy:oy + crop, ox:ox + crop]
        x = torch.where((torch.rand(batch_size, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x).to(device)
        t = torch.randint(timesteps[0], timesteps[1], (batch_size,), generator=gen).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)
        loss = purifier.training_loss(x, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
        loss_sum += loss.item()
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    return loss_sum / max(steps, 1)


def train_purifier(purifier: DiffusionPurifier, images: torch.Tensor, *, steps: int = 50, lr: float = 2e-4,
                   batch_size: int = 32, crop: int = 64, max_timestep: int = 300, seed: int = 0,
                   device: torch.device | str = "cpu", ema_decay: float = 0.0) -> dict:
    """DDPM training on random crops, timesteps drawn only from [0, max_timestep).

    Purification never diffuses beyond t_max (~200), so the high-noise timesteps would be wasted compute;
    crops cut the cost ~4x and the convolutional UNet applies to full scans unchanged (crop = the scan size
    trains on whole scans, the end of the recipe). `ema_decay` > 0: the hospital returns the exponential moving
    average of its weights over its local steps (started from the round's global weights), not the last iterate.
    """
    gen = torch.Generator().manual_seed(seed)
    purifier.to(device).train()
    opt = torch.optim.AdamW(purifier.unet.parameters(), lr=lr, weight_decay=0.0)
    params = [p for p in purifier.unet.parameters() if p.requires_grad]
    loss = _denoiser_steps(purifier, params, opt, images, steps=steps, batch_size=batch_size, crop=crop,
                           timesteps=(0, max_timestep), gen=gen, device=device, ema_decay=ema_decay)
    return {"loss": loss, "num-examples": images.shape[0]}


@torch.no_grad()
def evaluate_purifier(purifier: DiffusionPurifier, images: torch.Tensor, *, max_timestep: int = 300,
                      seed: int = 0, batch_size: int = 32, device: torch.device | str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(seed)
    purifier.to(device).eval()
    total, loss_sum = 0, 0.0
    for idx in batches(len(images), batch_size, gen, shuffle=False):
        x = images[idx].to(device)
        t = torch.randint(0, max_timestep, (len(idx),), generator=gen).to(device)
        loss_sum += purifier.training_loss(x, t, torch.randn(x.shape, generator=gen).to(device)).item() * len(idx)
        total += len(idx)
    return {"loss": loss_sum / max(total, 1), "num-examples": len(images)}


def train_ffdnet(purifier, images: torch.Tensor, *, steps: int = 50, lr: float = 5e-5, batch_size: int = 16,
                 crop: int = 64, min_timestep: int = 20, max_timestep: int = 250, seed: int = 0,
                 device: torch.device | str = "cpu", ema_decay: float = 0.0) -> dict:
    """Fine-tune the FFDNet purifier's denoiser on clean scans at the noise levels purification uses.

    Each step: a batch of random crops (one window per batch, flips), each diffused to a step t drawn uniformly
    from [min_timestep, max_timestep] with the DDPM schedule, and the squared error of the one-call denoised
    crop against the clean one (`FFDNetPurifier.training_loss`). The network is convolutional: crops train it
    for whole scans. `ema_decay` > 0: return the EMA of the local weights, as `train_purifier` does.
    """
    gen = torch.Generator().manual_seed(seed)
    purifier.to(device).train()
    params = [p for p in purifier.ffdnet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    size = images.shape[-1]
    loss = _denoiser_steps(purifier, params, opt, images, steps=steps, batch_size=batch_size,
                           crop=min(int(crop) or size, size), timesteps=(int(min_timestep), int(max_timestep) + 1),
                           gen=gen, device=device, ema_decay=ema_decay)
    purifier.eval()
    return {"loss": loss, "num-examples": images.shape[0]}


@torch.no_grad()
def evaluate_ffdnet(purifier, images: torch.Tensor, *, min_timestep: int = 20, max_timestep: int = 250,
                    seed: int = 0, batch_size: int = 16, device: torch.device | str = "cpu", limit: int = 32) -> dict:
    """Whole validation scans (the first `limit`, 0: all; the same ones every round), each at a seeded step in
    [min_timestep, max_timestep]: the training loss (MSE) and the PSNR of the clamped denoised scan (dB, mean
    over scans)."""
    images = images[:limit] if limit else images
    gen = torch.Generator().manual_seed(seed)
    purifier.to(device).eval()
    total, loss_sum, psnr_sum = 0, 0.0, 0.0
    for idx in batches(len(images), batch_size, gen, shuffle=False):
        x = images[idx].to(device)
        t = torch.randint(int(min_timestep), int(max_timestep) + 1, (len(idx),), generator=gen).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)
        out = purifier.denoise(purifier.noisy(x, t, noise), t)
        loss_sum += float(((out - x) ** 2).mean()) * len(idx)
        mse = ((out.clamp(0, 1) - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnr_sum += float((10 * torch.log10(1 / mse)).sum())
        total += len(idx)
    return {"loss": loss_sum / max(total, 1), "psnr": psnr_sum / max(total, 1), "num-examples": len(images)}
