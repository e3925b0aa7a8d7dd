"""Training scans as the defended classifier will see them: purified, clean and attacked.

The hospital classifiers were trained on scans; behind the defence they read purified scans P(x), whose fine
texture the denoiser has replaced, and purified adversarial scans P(x + delta), in which part of the
perturbation survives. Fine-tuning on exactly those inputs closes both gaps (issue: "the classifier is trained on
what it will see"). For each sampled training scan of a hospital we add two rows to the cache:

- ``purified-clean``: the scan, diffused to the depth t* the defence would pick for it (the shipped detector's
  score, `purify="always"`), and denoised;
- ``purified-pgd``: the scan attacked by L-inf PGD on that hospital's classifier (eps drawn per batch from
  `EPS_CHOICES`), then purified at its own t*.

The rows keep the scan's label, tumour type, source, hospital and group, and are `train` rows, so the federated
classifier training reads them like any other of its hospital's scans (no scan leaves its hospital: each
hospital's copies come from its own training scans and its own personalised model). Validation and test rows are
never touched.
"""

from __future__ import annotations

import numpy as np
import torch

from medfedpure.attacks import make_attack
from medfedpure.data import Cache
from medfedpure.io import to_uint8

__all__ = ["EPS_CHOICES", "purified_rows", "extend_cache", "PREFIXES"]

EPS_CHOICES = (0.015, 8 / 255)  # the paper protocol's eps and the common 8/255
PREFIXES = ("purified-clean:", "purified-pgd:")


def purified_rows(pipe, cache: Cache, per_hospital: int, *, seed: int = 0, pgd_steps: int = 10,
                  batch_size: int = 16, progress=None) -> Cache:
    """-> a Cache of the new rows: for `per_hospital` training scans of each hospital (sampled, seeded), one
    purified clean copy and one purified PGD copy. `pipe`: a MedFedPure pipeline (its classifiers, detector and
    purifier are the ones the copies are made for)."""
    rng = np.random.default_rng(seed)
    parts: list[dict] = []
    for hospital in cache.hospitals:
        rows = np.flatnonzero(cache.mask("train", hospital))
        if per_hospital < len(rows):
            rows = np.sort(rng.choice(rows, per_hospital, replace=False))
        model = pipe.classifier_for(hospital)
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            batch_seed = int(rng.integers(2**31))
            x = torch.from_numpy(cache.images[idx].astype(np.float32) / 255.0).unsqueeze(1)
            y = torch.from_numpy(cache.labels[idx].astype(np.int64))
            eps = float(EPS_CHOICES[int(rng.integers(len(EPS_CHOICES)))])
            attack = make_attack("pgd", model, eps=eps, step=eps / 4, steps=pgd_steps, seed=batch_seed)
            with torch.enable_grad():
                adv = attack(x, y).detach()
            for prefix, images in zip(PREFIXES, (x, adv)):
                with torch.no_grad():
                    score = pipe.detect(images)[2]
                    t_star = pipe.t_star(score, hospital, purify="always")
                    purified = pipe.purify(images, t_star, seed=batch_seed)
                parts.append({"images": to_uint8(purified[:, 0].numpy()), "rows": idx, "prefix": prefix})
            if progress is not None:
                progress(hospital, start + len(idx), len(rows))
    return _rows_cache(cache, parts)


def _rows_cache(cache: Cache, parts: list[dict]) -> Cache:
    rows = np.concatenate([p["rows"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    images = (np.concatenate([p["images"] for p in parts]) if parts
              else np.zeros((0, cache.size, cache.size), dtype=np.uint8))
    paths = np.array([p["prefix"] + str(cache.paths[r]) for p in parts for r in p["rows"]])
    return Cache(images, cache.labels[rows], paths, cache.sha256[rows], cache.split[rows], cache.hospital[rows],
                 cache.group[rows], cache.split_sha256, cache.size, cache.source[rows], cache.tumour_type[rows])


def extend_cache(cache: Cache, extra: Cache) -> Cache:
    """The cache with `extra`'s rows appended (same split file and scan size; only training rows)."""
    if extra.split_sha256 != cache.split_sha256 or extra.size != cache.size:
        raise ValueError("the added rows come from a different split or scan size")
    if len(extra) and set(extra.split.tolist()) != {"train"}:
        raise ValueError("only training rows may be added")
    cat = np.concatenate
    return Cache(cat([cache.images, extra.images]), cat([cache.labels, extra.labels]),
                 cat([cache.paths.astype(str), extra.paths.astype(str)]), cat([cache.sha256, extra.sha256]),
                 cat([cache.split, extra.split]), cat([cache.hospital, extra.hospital]),
                 cat([cache.group, extra.group]), cache.split_sha256, cache.size,
                 cat([cache.source, extra.source]), cat([cache.tumour_type, extra.tumour_type]))
