"""Attacks: projection, seeding, eval mode, optimality on a linear model, gradients through the defence."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medfedpure.attacks import AdaptivePGD, AttackModel, load_source_classifier, make_attack, perturbation_norms

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tiny_checkpoint(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_tiny_ckpt", REPO_ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_checkpoint(out)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An UNTRAINED tiny checkpoint (2 hospitals): plumbing only, its predictions mean nothing."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny_attacks") / "ckpt")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ckpt):
    from medfedpure.pipeline import MedFedPure

    return MedFedPure.from_pretrained(str(tiny_ckpt), device="cpu")


@pytest.fixture(scope="session")
def scans():
    from medfedpure.io import read_scan

    files = sorted(f for f in (REPO_ROOT / "assets" / "examples").glob("*.jpg") if f.name.startswith(("no", "y")))
    x = torch.stack([torch.from_numpy(read_scan(f, size=128).image) for f in files]).unsqueeze(1)
    y = torch.tensor([int(f.name.startswith("y")) for f in files])
    return x, y


@pytest.fixture(scope="session")
def linear_model(scans):
    """Logistic regression fitted to the six example scans (100% accurate on them)."""
    x, y = scans
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 2), nn.LogSoftmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(200):
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        opt.step()
        if (model(x).argmax(1) == y).all() and loss.item() < 0.1:
            break
    model.eval().requires_grad_(False)
    assert (model(x).argmax(1) == y).all()
    return model


def _linear_breaking_eps(model, x, y) -> torch.Tensor:
    """Per scan, the smallest L-inf eps at which the optimal attack on the linear model flips its label
    (closed form: every pixel moves eps against the class direction, as far as the [0, 1] box allows)."""
    lin = model[1]
    w = (lin.weight[1] - lin.weight[0]).view(1, -1)
    b = lin.bias[1] - lin.bias[0]
    s = (2 * y - 1).float().view(-1, 1)          # +1 tumour, -1 no tumour
    xf = x.flatten(1)
    direction = -torch.sign(s * w)               # decreases the margin s (w.x + b)
    room = torch.where(direction > 0, 1 - xf, xf)

    def margin(eps):
        return (s * ((xf + direction * torch.minimum(room, eps.view(-1, 1))) @ w.T + b)).flatten()

    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    assert (margin(hi) < 0).all(), "not breakable inside the box"
    for _ in range(40):
        mid = (lo + hi) / 2
        broken = margin(mid) < 0
        hi, lo = torch.where(broken, mid, hi), torch.where(broken, lo, mid)
    return hi


@pytest.mark.parametrize("eps,step,steps", [(0.015, 0.003, 7), (8 / 255, 2 / 255, 10)])
def test_pgd_stays_in_the_eps_ball_and_the_image_range(tiny_pipe, scans, eps, step, steps):
    x, y = scans
    attack = make_attack("pgd", tiny_pipe.classifier_for(0), eps=eps, step=step, steps=steps, seed=0)
    adv = attack(x, y)
    linf, _ = perturbation_norms(x, adv)
    assert (linf <= eps + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert linf.max() > eps / 2  # it did move


def test_fgsm_and_pgdl2_projection(tiny_pipe, scans):
    x, y = scans
    model = tiny_pipe.classifier_for(1)
    adv = make_attack("fgsm", model, eps=0.015)(x, y)
    linf, _ = perturbation_norms(x, adv)
    assert (linf <= 0.015 + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    adv = make_attack("pgdl2", model, eps_l2=0.5, steps=3)(x, y)
    _, l2 = perturbation_norms(x, adv)
    assert (l2 <= 0.5 + 1e-4).all() and adv.min() >= 0 and adv.max() <= 1


def test_attack_is_seeded_and_leaves_the_global_rng_alone(tiny_pipe, scans):
    x, y = scans
    attack = make_attack("pgd", tiny_pipe.classifier_for(0), seed=3)
    torch.manual_seed(123)
    a1 = attack(x, y, key="batch0")
    after = torch.rand(1)
    torch.manual_seed(123)
    a2 = attack(x, y, key="batch0")
    assert torch.equal(a1, a2)
    assert torch.equal(after, torch.rand(1))  # the caller's RNG stream is unchanged by the attack
    assert not torch.equal(a1, attack(x, y, key="batch1"))


def test_attacks_never_switch_the_models_to_training_mode(tiny_pipe, scans):
    x, y = scans
    for name in ("fgsm", "pgd", "cw"):
        make_attack(name, tiny_pipe.classifier_for(0), steps=2, cw_steps=2)(x[:2], y[:2])
    assert not tiny_pipe.classifier.training
    assert not any(m.training for m in tiny_pipe.classifier.modules())
    wrapper = AttackModel(tiny_pipe.classifier_for(0))
    wrapper.train()
    assert not tiny_pipe.classifier.training


def test_pgd_and_fgsm_find_the_optimal_attack_on_a_linear_model(linear_model, scans):
    """On a linear model the optimal L-inf attack is known in closed form: PGD must break every scan just above
    the breaking budget and none just below it (no gradient masking, no projection error)."""
    x, y = scans
    need = _linear_breaking_eps(linear_model, x, y)
    hi, lo = float(need.max()) * 1.05, float(need.min()) * 0.95
    for name in ("pgd", "fgsm"):
        adv = make_attack(name, linear_model, eps=hi, step=hi / 4, steps=10, seed=0)(x, y)
        assert (linear_model(adv).argmax(1) == y).float().mean() == 0.0, name  # ~0% robust accuracy
        adv = make_attack(name, linear_model, eps=lo, step=lo / 4, steps=10, seed=0)(x, y)
        assert (linear_model(adv).argmax(1) == y).all(), name


def test_cw_works_on_log_probabilities(linear_model, scans):
    """torchattacks' own CW masks the true class with 0, the largest value among log-probabilities, so its loss
    is identically 0 and it returns the clean scans; ours reaches 0% accuracy."""
    import torchattacks

    x, y = scans
    plain = torchattacks.CW(AttackModel(linear_model), c=10, steps=20, lr=0.05)(x, y)
    assert (linear_model(plain).argmax(1) == y).all()
    adv = make_attack("cw", linear_model, cw_c=100, cw_steps=100, cw_lr=0.05)(x, y)
    assert (linear_model(adv).argmax(1) == y).float().mean() == 0.0
    assert adv.min() >= 0 and adv.max() <= 1


def test_gradients_through_the_purifier_are_finite_and_nonzero(tiny_pipe, scans):
    x, y = scans
    x = x[:2].clone().requires_grad_(True)
    defended = tiny_pipe.defended(0, purify="always")
    defended.generator = torch.Generator().manual_seed(0)
    loss = F.nll_loss(defended(x), y[:2])
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("gradient", ["full", "bpda"])
def test_adaptive_attack_direction_and_projection(tiny_pipe, scans, gradient):
    x, y = scans
    attack = make_attack("adaptive", pipe=tiny_pipe, hospital=0, eps=0.015, step=0.005, steps=2, eot=2,
                         gradient=gradient, seed=0)
    assert isinstance(attack, AdaptivePGD)
    g, score, fooled = attack.direction(x[:2], y[:2], torch.Generator().manual_seed(0))
    assert torch.isfinite(g).all() and (g.abs().flatten(1).sum(1) > 0).all()
    assert score.shape == fooled.shape == (2,) and fooled.dtype == torch.bool
    adv = attack(x[:2], y[:2], key=0)
    linf, _ = perturbation_norms(x[:2], adv)
    assert (linf <= 0.015 + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert attack.settings()["gradient"] == gradient


def test_adaptive_detector_term_lowers_the_anomaly_score(tiny_pipe, scans):
    """With the detector term dominating, the adaptive attack must push the MAE score down (sign check)."""
    x, y = scans
    x, y = x[:2], y[:2]
    attack = AdaptivePGD(tiny_pipe, 0, eps=0.03, step=0.01, steps=3, eot=1, lam=1e3, margin=0.0, evade_weight=0.0,
                         gradient="bpda", random_start=False)
    adv = attack(x, y)
    with torch.no_grad():
        assert (tiny_pipe.detect(adv)[2] < tiny_pipe.detect(x)[2]).all()


def test_make_attack_rejects_unknown_names_and_missing_models(tiny_pipe):
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("deepfool", tiny_pipe.classifier_for(0))
    with pytest.raises(ValueError, match="pipeline"):
        make_attack("adaptive", tiny_pipe.classifier_for(0))
    assert make_attack("adaptive", tiny_pipe.defended(1)).hospital == 1
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(make_attack("none")(x, torch.zeros(1, dtype=torch.long)), x)


def test_transfer_source_loads_a_classifier_folder_or_a_checkpoint(tiny_ckpt, tiny_pipe, scans):
    x, y = scans
    for source in (tiny_ckpt, tiny_ckpt / "classifier"):
        src = load_source_classifier(source)
        model = src.for_hospital(1)
        assert torch.allclose(model(x[:2]), tiny_pipe.classifier_for(1)(x[:2]), atol=1e-5)
    adv = make_attack("pgd", src.for_hospital(0), steps=2)(x[:2], y[:2])
    assert adv.shape == x[:2].shape
    with pytest.raises(FileNotFoundError):
        load_source_classifier(tiny_ckpt / "detector-nothing-here")
