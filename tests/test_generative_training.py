"""The recipes of the two generative models: convolutional MAE on crops, DDPM with an EMA of the weights."""

from __future__ import annotations

import pytest
import torch

from medfedpure import detector
from medfedpure.federated import settings, steps
from medfedpure.models.conv_mae import ConvMaskedAutoencoder
from medfedpure.models.mae import MaskedAutoencoder, build_mae
from medfedpure.models.purifier import DiffusionPurifier, build_unet


def test_build_mae_follows_the_recorded_arch():
    assert isinstance(build_mae(settings.resolve("mae")["model-config"]), ConvMaskedAutoencoder)
    vit = build_mae({"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "heads": 2,
                     "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2})  # a flat pre-"arch" config
    assert isinstance(vit, MaskedAutoencoder)
    with pytest.raises(ValueError, match="arch"):
        build_mae({"arch": "unet"})


def test_another_arch_replaces_the_default_model_config():
    cfg = settings.resolve("mae", {"model-config": {"arch": "vit", "patch_size": 16}})
    assert cfg["model-config"] == {"arch": "vit", "patch_size": 16}
    assert settings.resolve("mae", {"model-config": {"width": 8}})["model-config"]["arch"] == "conv"


def test_conv_mae_sees_only_visible_patches():
    """A hidden patch's prediction must not depend on its own pixels (otherwise the error map means nothing)."""
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(image_size=32, patch_size=8, width=8, levels=2).eval()
    x = torch.rand(1, 1, 32, 32)
    keep = torch.tensor([[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])  # patch 5 hidden
    changed = x.clone()
    changed[..., 8:16, 8:16] = torch.rand(8, 8)                               # patch 5 = row 1, col 1
    with torch.no_grad():
        a, b = mae(x, keep), mae(changed, keep)
    assert torch.allclose(a, b, atol=1e-6)
    keep_all = torch.arange(16)[None]
    with torch.no_grad():
        assert not torch.allclose(mae(x, keep_all), mae(changed, keep_all))


def test_conv_mae_trains_on_crops_and_scores_whole_scans():
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(image_size=64, patch_size=8, width=8, levels=2)
    x = torch.rand(12, 1, 64, 64)
    first = steps.evaluate_mae(mae, x)["loss"]
    for _ in range(4):
        steps.train_mae(mae, x, epochs=2, lr=3e-3, batch_size=6, crop=32)
    assert steps.evaluate_mae(mae, x)["loss"] < first
    keep = detector.keep_sets_for(mae, 1, 0)               # ratio 0.25 -> 4 masks, every patch hidden once
    recon, err = detector.reconstruct(mae.eval(), x[:2], keep)
    assert recon.shape == err.shape == (2, 1, 64, 64)
    assert (err > 0).all()                                  # every pixel was hidden in some mask


def test_vit_mae_refuses_crops():
    vit = MaskedAutoencoder(image_size=32, patch_size=8, embed_dim=16, depth=1, heads=2, decoder_dim=16,
                            decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="crop"):
        steps.train_mae(vit, torch.rand(4, 1, 32, 32), crop=16)


def _tiny_purifier() -> DiffusionPurifier:
    torch.manual_seed(0)
    return DiffusionPurifier(build_unet(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                                        down_block_types=("DownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4))


def test_purifier_ema_returns_the_average_not_the_last_step():
    x = torch.rand(8, 1, 16, 16)
    moved = {}
    for decay in (0.0, 0.99):
        pur = _tiny_purifier()
        start = [p.detach().clone() for p in pur.unet.parameters()]
        steps.train_purifier(pur, x, steps=4, batch_size=4, crop=16, ema_decay=decay, lr=1e-3)
        moved[decay] = sum(float((a - b.detach()).abs().sum()) for a, b in zip(start, pur.unet.parameters()))
    assert 0 < moved[0.99] < 0.2 * moved[0.0]              # 4 steps at 0.99 keep ~96% of the start


def test_summed_score_is_the_mean_of_its_map_and_needs_its_norms():
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(image_size=32, patch_size=8, width=8, levels=2).eval()
    x = torch.rand(3, 1, 32, 32) * 0.3
    x[..., :10, :] = 0.0                                    # a dark band: the background region
    keep = detector.keep_sets_for(mae, 1, 0)
    norms = detector.parse_norms("mean_abs_error=0.1, background_highpass=0.01")
    with torch.no_grad():
        _, amap, score = detector.score_scans(mae, x, keep, "mean_abs_error+background_highpass", norms=norms)
        parts = [detector.score_scans(mae, x, keep, p)[2] / norms[p] for p in norms]
    assert torch.allclose(score, parts[0] + parts[1], rtol=1e-5)
    assert torch.allclose(amap.flatten(1).mean(1), score, rtol=1e-5)   # the map shown is the score that decides
    with pytest.raises(ValueError, match="norms"):
        detector.score_scans(mae, x, keep, "mean_abs_error+background_highpass")
    with pytest.raises(ValueError, match="unknown"):
        detector.statistic_parts("mean_abs_error+nonsense")
    with pytest.raises(ValueError, match="score-norms"):
        detector.parse_norms("mean_abs_error")
    assert detector.reads_mae("mean_abs_error+background_highpass") and not detector.reads_mae("background_highpass")
