"""Purified training copies (medfedpure/purified_training.py) and the gate warm start of a classifier fine-tune,
on real example scans and the shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfedpure.data import Cache

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
EXAMPLES = REPO / "assets" / "examples"
FILES = ("no427.jpg", "y1493.jpg", "no411.jpg", "y1349.jpg")


@pytest.fixture(scope="module")
def pipe():
    from medfedpure.pipeline import MedFedPure

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return MedFedPure.from_pretrained(PRETRAINED, device="cpu")


@pytest.fixture(scope="module")
def cache() -> Cache:
    """Four real scans as the training rows of hospitals 0 and 3, plus one validation row."""
    from medfedpure.io import read_scan

    images = np.stack([(read_scan(EXAMPLES / f).image * 255).round().astype(np.uint8) for f in FILES + FILES[:1]])
    n = len(images)
    return Cache(images, np.array([0, 1, 0, 1, 0]), np.array([f"ex/{f}" for f in FILES + FILES[:1]]),
                 np.array([f"{i:064x}" for i in range(n)]), np.array(["train"] * 4 + ["val"]),
                 np.array([0, 0, 3, 3, 0]), np.arange(n), "split-digest", 128, np.array(["br35h"] * n),
                 np.full(n, -1))


def test_purified_rows_keep_labels_and_differ_from_their_scans(pipe, cache):
    from medfedpure.purified_training import PREFIXES, extend_cache, purified_rows

    extra = purified_rows(pipe, cache, per_hospital=2, seed=0, pgd_steps=3, batch_size=2)
    assert len(extra) == 8  # 2 scans x 2 hospitals x (clean, attacked)
    assert set(extra.split.tolist()) == {"train"}
    by_path = {p: i for i, p in enumerate(cache.paths.tolist()) if cache.split[i] == "train"}
    for i, path in enumerate(extra.paths.tolist()):
        prefix = next(p for p in PREFIXES if path.startswith(p))
        j = by_path[path[len(prefix):]]
        assert extra.labels[i] == cache.labels[j] and extra.hospital[i] == cache.hospital[j]
        assert extra.group[i] == cache.group[j]
        diff = np.abs(extra.images[i].astype(int) - cache.images[j].astype(int))
        assert 0 < diff.mean() < 40  # purified: changed, yet still this scan
    clean = extra.images[[i for i, p in enumerate(extra.paths) if p.startswith(PREFIXES[0])]]
    attacked = extra.images[[i for i, p in enumerate(extra.paths) if p.startswith(PREFIXES[1])]]
    assert not np.array_equal(clean, attacked)
    both = extend_cache(cache, extra)
    assert len(both) == len(cache) + 8 and (both.split == "val").sum() == 1


def test_extend_cache_refuses_rows_outside_training(cache):
    from medfedpure.purified_training import extend_cache

    with pytest.raises(ValueError, match="only training rows"):
        extend_cache(cache, cache.subset("val"))


def test_fine_tune_starts_from_each_hospitals_own_gate(pipe):
    from medfedpure.checkpoint_format import build_model, read_config
    from medfedpure.federated.client_app import _warm_start_gate

    fresh = build_model(read_config(PRETRAINED / "classifier", "classifier"))
    before = {k: v.clone() for k, v in fresh.personal_state().items()}
    _warm_start_gate(fresh, str(PRETRAINED / "classifier"), 3)
    after = fresh.personal_state()
    shipped = pipe.gates[3].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)
    for key, value in shipped.items():
        torch.testing.assert_close(after["gate." + key], value.float(), atol=1e-3, rtol=1e-3)
