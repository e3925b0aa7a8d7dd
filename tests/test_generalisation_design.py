"""What the classifier does to generalise: per-scan intensity normalisation, a tumour-type head trained from
partial labels, class- and source-balanced sampling, scanner augmentation, restyling; the OOD check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfedpure.federated import settings as run_settings
from medfedpure.federated import steps
from medfedpure.models.classifier import MixtureOfExpertsClassifier
from medfedpure.ood import OodCheck, fit_ood


def _scans(n=24, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((yy / 0.8) ** 2 + (xx / 0.65) ** 2 <= 1).float()
    x = head * (0.3 + 0.5 * torch.rand(n, 1, size, size, generator=g))
    return x.clamp(0, 1)


def test_scan_normalisation_ignores_the_scanners_gain():
    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3, input_norm="scan").eval()
    x = _scans(4)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x * 0.7), atol=1e-5)  # the same scan, exported darker
        dataset = MixtureOfExpertsClassifier(width=8, gate_width=4, input_norm="dataset").eval()
        assert not torch.allclose(dataset(x), dataset(x * 0.7), atol=1e-3)


def test_type_head_has_gradients_and_stays_out_of_the_decision():
    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3, input_norm="scan")
    x = _scans(6).requires_grad_(True)
    logp, types = model.mixture_and_type(x, model.gate)
    assert logp.shape == (6, 2) and types.shape == (6, 3)
    assert torch.allclose(logp, model(x))
    types.sum().backward()
    assert x.grad is not None and model.type_head.net[0].weight.grad.abs().sum() > 0
    assert all(k.startswith("type_head.") is False or k in model.shared_state() for k in model.state_dict())
    with pytest.raises(ValueError, match="shared trunk"):
        MixtureOfExpertsClassifier(num_types=3, expert_type="resnet")


def test_partial_type_labels_train_only_where_known():
    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3, input_norm="scan")
    x, y = _scans(16), torch.tensor([0, 1] * 8)
    types = torch.tensor([-1, 0, -1, 1, -1, 2, -1, -1] * 2)
    before = model.type_head.net[2].weight.detach().clone()
    out = steps.train_classifier(model, x, y, epochs=1, batch_size=8, tumour_types=types, augmentation="scanner")
    assert np.isfinite(out["loss"]) and not torch.equal(before, model.type_head.net[2].weight)
    frozen = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3)
    w = frozen.type_head.net[2].weight.detach().clone()
    steps.train_classifier(frozen, x, y, epochs=1, batch_size=8, tumour_types=torch.full((16,), -1))
    assert torch.equal(w, frozen.type_head.net[2].weight)  # no known type: the head gets no gradient


def test_stratum_sampling_balances_classes_and_sources():
    labels = torch.tensor([0] * 10 + [1] * 80 + [1] * 10)
    sources = torch.tensor([0] * 10 + [0] * 80 + [1] * 10)
    w = steps.stratum_sampling_weights(labels, sources)
    mass = lambda m: float(w[m].sum() / w.sum())  # noqa: E731
    assert mass(labels == 0) == pytest.approx(0.5, abs=0.01)
    assert mass((labels == 1) & (sources == 0)) == pytest.approx(mass((labels == 1) & (sources == 1)), abs=0.01)
    lonely = steps.stratum_sampling_weights(torch.tensor([0] + [1] * 99))
    share = float(lonely[0] / lonely.sum())  # one scan alone in its class: capped, not half of every batch
    assert 0.1 < share < 0.2


def test_scanner_augmentation_and_restyle_keep_range_and_background():
    g = torch.Generator().manual_seed(0)
    x = _scans(8, 64)
    out = steps.augment(x, g, "scanner")
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    r = steps.restyle(x, torch.Generator().manual_seed(1), p=1.0)
    background = x == 0
    assert torch.equal(r[background], x[background])
    assert not torch.allclose(r, x)
    # a restyled scan takes its partner's intensity distribution over the head
    a, b = x[0][x[0] > 0.02], r[0][x[0] > 0.02]
    assert torch.corrcoef(torch.stack([a.argsort().argsort().float(), b.argsort().argsort().float()]))[0, 1] > 0.99


def test_ood_check_flags_blank_and_noise_not_scans():
    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3, input_norm="scan").eval()
    train, val = _scans(64, seed=1), _scans(32, seed=2)
    check, record = fit_ood(model, train, torch.tensor([0, 1] * 32), val, quantile=0.99, margin=1.25)
    ok, _ = check.check(model, _scans(16, seed=3))
    assert ok.mean() >= 0.9
    blank = torch.zeros(2, 1, 64, 64)
    noise = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    bad, scores = check.check(model, torch.cat([blank, noise]))
    assert not bad.any()
    again = OodCheck.from_state(check.state_dict(), {"ood": record})
    assert {k: v[2] for k, v in again.levels.items()} == {k: v["threshold"] for k, v in record["levels"].items()}
    assert np.allclose(again.check(model, train[:8])[1], check.check(model, train[:8])[1])


def test_ood_layout_level_catches_an_extreme_crop_and_the_statistics_load_from_their_own_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = MixtureOfExpertsClassifier(width=8, gate_width=4, num_types=3, input_norm="scan").eval()
    train, val = _scans(64, seed=1), _scans(32, seed=2)
    check, record = fit_ood(model, train, torch.tensor([0, 1] * 32), val, quantile=0.99, margin=1.25)
    assert set(record["levels"]) == {"layer1", "layer2", "trunk", "layout"}
    scans = _scans(4, seed=3)
    crops = torch.nn.functional.interpolate(scans[:, :, 24:40, 24:40], size=64, mode="bilinear")  # centre 1/16
    ok_scans, _ = check.check(model, scans)
    ok_crops, _ = check.check(model, crops)
    assert ok_scans.all() and not ok_crops.any()
    # the statistics live in ood.safetensors when the record names it; a missing file is a clear error
    save_file(check.state_dict(), str(tmp_path / "ood.safetensors"))
    loaded = OodCheck.from_state({}, {"ood": {**record, "file": "ood.safetensors"}}, tmp_path)
    assert np.allclose(loaded.check(model, crops)[1], check.check(model, crops)[1])
    with pytest.raises(FileNotFoundError, match="ood.safetensors"):
        OodCheck.from_state({}, {"ood": {**record, "file": "ood.safetensors"}}, tmp_path / "elsewhere")


def test_shipped_ood_check_passes_the_example_scans_and_scores_their_extreme_crops_higher(examples_dir):
    from medfedpure.io import read_scan
    from medfedpure.pipeline import MedFedPure

    pipe = MedFedPure.from_pretrained(str(examples_dir.parents[1] / "pretrained"), device="cpu")
    files = sorted(p for p in examples_dir.iterdir() if p.suffix in (".jpg", ".png"))
    x = torch.from_numpy(np.stack([read_scan(p, size=128).image for p in files]))[:, None]
    ok, score = pipe.ood.check(pipe.classifier, x)
    assert ok.all(), dict(zip([p.name for p in files], score.round(2)))
    crops = torch.nn.functional.interpolate(x[:, :, 48:80, 48:80], size=128, mode="bilinear")
    _, crop_score = pipe.ood.check(pipe.classifier, crops)
    # a centre crop of 1/16 of the frame always reads further from the training scans than the scan itself
    # (reports/ood.md: some such crops cross the threshold, not all: some sources fill the frame with the head)
    assert (crop_score > score * 1.2).all(), (score.round(2), crop_score.round(2))


def test_a_colour_picture_of_a_real_scan_is_out_of_distribution_with_its_reason(examples_dir, tmp_path):
    """A pseudo-colour rendering of a real example scan reads like a scan to the features, but it is a colour
    picture: no diagnosis, reason "colour"; the same file saved in grayscale is in distribution."""
    from matplotlib import colormaps
    from PIL import Image

    from medfedpure.io import read_scan
    from medfedpure.pipeline import MedFedPure

    pipe = MedFedPure.from_pretrained(str(examples_dir.parents[1] / "pretrained"), device="cpu")
    gray = read_scan(examples_dir / "y1493.jpg").image
    Image.fromarray((colormaps["jet"](gray)[..., :3] * 255).astype(np.uint8)).save(tmp_path / "jet.png")
    Image.fromarray((gray * 255).astype(np.uint8)).save(tmp_path / "gray.png")
    jet, plain = read_scan(tmp_path / "jet.png"), read_scan(tmp_path / "gray.png")
    assert jet.meta["colour_fraction"] > 0.2 and plain.meta["colour_fraction"] == 0.0
    colour_result, gray_result = pipe.analyze([jet, plain], hospital=0, purify="never")
    assert colour_result.in_distribution is False and colour_result.ood_reason == "colour"
    assert gray_result.in_distribution is True and gray_result.ood_reason is None
    # a tensor carries no file, so the caller passes the colour share (the app and CLI do, for attacked copies)
    x = torch.from_numpy(np.stack([jet.image, plain.image]))[:, None]
    again = pipe.analyze(x, hospital=0, purify="never", colours=[jet.meta["colour_fraction"], 0.0])
    assert [r.ood_reason for r in again] == ["colour", None]
    assert [r.ood_reason for r in pipe.analyze(x, hospital=0, purify="never")] == [None, None]


def test_unknown_settings_are_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        run_settings.resolve("classifier", {"lrr": 0.002})
    with pytest.raises(ValueError, match="setting of the mae model"):
        run_settings.resolve("classifier", {"score": "x"})
    assert run_settings.resolve("classifier", {"lr": 0.002})["lr"] == 0.002
