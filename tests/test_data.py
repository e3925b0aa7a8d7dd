"""Folder listing, duplicate groups, group-aware split, hospital partition, split files and the scan cache."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfedpure import data as D
from medfedpure.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
BR35H = REPO_ROOT / ".." / "shared" / "data" / "br35h"


# ---------------------------------------------------------------------------------------------------------
# synthetic scan folders: distinct "slices" plus flipped / resized / re-cropped / intensity-changed copies


def _slice(rng: np.random.Generator, h: int = 120, w: int = 100) -> np.ndarray:
    """A smooth random texture inside an ellipse on black, float in [0, 1]."""
    coarse = rng.random((6, 6)).astype(np.float32)
    tex = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = rng.uniform(0.35, 0.47) * h, rng.uniform(0.35, 0.47) * w
    inside = ((yy - h / 2) / ry) ** 2 + ((xx - w / 2) / rx) ** 2 <= 1
    return np.clip(0.2 + 0.8 * tex, 0, 1) * inside


def _variant(img: np.ndarray, kind: str) -> np.ndarray:
    if kind == "hflip":
        return img[:, ::-1]
    if kind == "vflip":
        return img[::-1]
    if kind == "bright":
        return np.clip(img * 0.7, 0, 1) ** 1.2
    if kind == "bigger":
        h, w = img.shape
        return np.asarray(Image.fromarray(img.astype(np.float32)).resize((int(w * 1.7), int(h * 1.7))))
    if kind == "recrop":  # wider black margin around the same slice
        return np.pad(img, ((25, 25), (40, 40)))
    raise ValueError(kind)


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def make_folder(root: Path, n_slices: int = 24, seed: int = 0, copies=("hflip", "bright")) -> dict[str, int]:
    """no/ and yes/ with n_slices distinct slices each (+ copies of every other slice), pred/ and a side file.
    Returns {relative path: slice id} for the labelled files."""
    rng = np.random.default_rng(seed)
    truth = {}
    for d in ("no", "yes"):
        for k in range(n_slices):
            sid = len({v for v in truth.values()})
            base = _slice(rng)
            _save(root / d / f"{d}{k}.png", base)
            truth[f"{d}/{d}{k}.png"] = sid
            if k % 2 == 0:
                for j, kind in enumerate(copies):
                    name = f"{d}/{d}{k}_{kind}.png"
                    _save(root / name, _variant(base, kind))
                    truth[name] = sid
    _save(root / "pred" / "pred0.png", _slice(rng))
    (root / "no" / "notes.md").write_text("not a scan\n")
    return truth


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synth")
    return root, make_folder(root)


def _small_split(root: Path, out: Path, **kw) -> D.SplitResult:
    args = dict(hospitals=3, min_train=4, min_val=1, test_fraction=0.2, val_fraction=0.2)
    args.update(kw)
    return D.split_folder(root, out, **args)


# ---------------------------------------------------------------------------------------------------------
# listing


def test_list_labelled_sorted_without_pred_or_side_files(synth):
    root, truth = synth
    recs = D.list_labelled(root)
    assert [r.path for r in recs] == sorted(truth)
    assert all(r.label == (1 if r.path.startswith("yes/") else 0) for r in recs)
    assert not any(r.path.startswith("pred/") or r.path.endswith(".md") for r in recs)
    assert [r.path for r in D.list_unlabelled(root)] == ["pred/pred0.png"]
    assert all(r.label is None for r in D.list_unlabelled(root))


def test_custom_class_mapping(tmp_path, examples_dir):
    for name in ("y1431.jpg", "y1493.jpg"):
        (tmp_path / "glioma" / "p1").mkdir(parents=True, exist_ok=True)
        shutil.copy(examples_dir / name, tmp_path / "glioma" / "p1" / name)
    (tmp_path / "healthy").mkdir()
    shutil.copy(examples_dir / "no35.jpg", tmp_path / "healthy" / "no35.jpg")
    mapping = D.parse_classes("healthy=0, glioma=1")
    assert mapping == {"healthy": 0, "glioma": 1}
    recs = D.list_labelled(tmp_path, mapping)
    assert [(r.path, r.label) for r in recs] == [
        ("glioma/p1/y1431.jpg", 1), ("glioma/p1/y1493.jpg", 1), ("healthy/no35.jpg", 0)]  # fmt: skip
    assert D.class_names_for(mapping) == {0: "healthy", 1: "glioma"}
    with pytest.raises(D.DataError, match="'tumour' not found"):
        D.list_labelled(tmp_path, {"tumour": 1})


@pytest.mark.parametrize("bad", ["", "no", "no=x", "no=-1", "no=0,no=1"])
def test_parse_classes_rejects(bad):
    with pytest.raises(ValueError):
        D.parse_classes(bad)


# ---------------------------------------------------------------------------------------------------------
# duplicates


def test_duplicate_groups_find_copies_and_keep_slices_apart(synth):
    root, truth = synth
    recs = D.list_labelled(root)
    scan = D.read_folder(root, recs)
    assert not scan.errors
    dups = D.find_duplicate_groups(scan.images, scan.sha256)
    sid = np.array([truth[r.path] for r in recs])
    for s in np.unique(sid):  # all copies of a slice in one group ...
        assert len(set(dups.group[sid == s].tolist())) == 1
    assert dups.n_groups == len(np.unique(sid))  # ... and different slices never merged


def test_exact_copies_linked_by_hash_even_if_unreadable():
    imgs = np.zeros((3, 32, 32), np.uint8)  # blank images correlate with nothing
    dups = D.find_duplicate_groups(imgs, ["a" * 64, "b" * 64, "a" * 64])
    assert dups.group.tolist() == [0, 1, 0] and dups.exact_copies == 1


def test_flipped_recropped_brain_scans_grouped(tmp_path, examples_dir):
    src = np.asarray(Image.open(examples_dir / "no35.jpg").convert("L"), dtype=np.float32) / 255
    for kind in ("hflip", "vflip", "bright", "bigger", "recrop"):
        _save(tmp_path / f"{kind}.png", _variant(src, kind))
    shutil.copy(examples_dir / "no35.jpg", tmp_path / "orig.jpg")
    shutil.copy(examples_dir / "y1431.jpg", tmp_path / "other.jpg")
    recs = D.list_labelled(tmp_path.parent, {tmp_path.name: 0})
    scan = D.read_folder(tmp_path.parent, recs)
    dups = D.find_duplicate_groups(scan.images, scan.sha256)
    by = {Path(r.path).stem: g for r, g in zip(recs, dups.group)}
    assert len({by[k] for k in ("orig", "hflip", "vflip", "bright", "bigger", "recrop")}) == 1
    assert by["other"] != by["orig"]


# ---------------------------------------------------------------------------------------------------------
# split and partition (pure arrays: fast, many items)


def _toy(n_groups: int = 900, seed: int = 1):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_groups)
    glab = rng.integers(0, 2, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    return np.repeat(glab, sizes), groups


def _class_frac(part, labels, split="train"):
    out = []
    for h in range(part.proportions.shape[0]):
        m = (part.split == split) & (part.hospital == h)
        out.append(labels[m].mean())
    return np.array(out)


def test_make_split_groups_whole_sizes_and_minimums():
    labels, groups = _toy()
    part = D.make_split(labels, groups, seed=3, hospitals=10, alpha=0.5, min_train=30, min_val=8)
    n = len(labels)
    for g in np.unique(groups):  # a group never crosses splits or hospitals
        m = groups == g
        assert len(set(part.split[m])) == 1 and len(set(part.hospital[m].tolist())) == 1
    counts = {s: int((part.split == s).sum()) for s in D.SPLITS}
    assert sum(counts.values()) == n
    assert abs(counts["test"] - 0.2 * n) <= 5
    assert abs(counts["val"] - 0.2 * (n - counts["test"])) <= 5
    for c in (0, 1):  # stratified
        frac = (part.split[labels == c] == "test").mean()
        assert abs(frac - 0.2) < 0.01
    assert (part.hospital[part.split == "test"] == -1).all()
    assert (part.hospital[part.split != "test"] >= 0).all()
    train_n = np.bincount(part.hospital[part.split == "train"], minlength=10)
    val_n = np.bincount(part.hospital[part.split == "val"], minlength=10)
    assert train_n.min() >= 30 and val_n.min() >= 8
    assert train_n.sum() == counts["train"] and val_n.sum() == counts["val"]


def test_label_skew_follows_alpha_and_val_follows_train():
    labels, groups = _toy(1500)
    skewed = D.make_split(labels, groups, seed=0, hospitals=10, alpha=0.5)
    uniform = D.make_split(labels, groups, seed=0, hospitals=10, alpha=1000.0)
    f_skew, f_unif = _class_frac(skewed, labels), _class_frac(uniform, labels)
    assert f_skew.std() > 0.15 and f_skew.max() - f_skew.min() > 0.4
    assert f_unif.std() < 0.05
    sizes = np.bincount(uniform.hospital[uniform.split == "train"])
    assert sizes.max() / sizes.min() < 1.3  # near-uniform sizes too
    # each hospital's val scans follow its own label mix (same proportions matrix)
    assert np.corrcoef(f_skew, _class_frac(skewed, labels, "val"))[0, 1] > 0.9
    # test and val do not depend on the hospital settings
    assert (skewed.split == uniform.split).all()


def test_make_split_deterministic_and_seed_sensitive():
    labels, groups = _toy()
    a = D.make_split(labels, groups, seed=5)
    b = D.make_split(labels, groups, seed=5)
    c = D.make_split(labels, groups, seed=6)
    assert (a.split == b.split).all() and (a.hospital == b.hospital).all()
    assert (a.split != c.split).any()


def test_impossible_minimums_raise():
    labels, groups = _toy(60)
    with pytest.raises(D.DataError, match="too few scans"):
        D.make_split(labels, groups, hospitals=10, min_train=30)


# ---------------------------------------------------------------------------------------------------------
# split files


def test_split_file_reproducible_and_grouped(synth, tmp_path):
    root, truth = synth
    a = _small_split(root, tmp_path / "a.csv", seed=1)
    _small_split(root, tmp_path / "b.csv", seed=1)
    _small_split(root, tmp_path / "c.csv", seed=2)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    ja, jb = (tmp_path / "a.json").read_text(), (tmp_path / "b.json").read_text()
    assert ja.replace('"a.csv"', "") == jb.replace('"b.csv"', "")
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    raw = (tmp_path / "a.csv").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert raw.split(b"\n", 1)[0] == b"path,sha256,label,split,hospital,group"

    rows = D.read_split(tmp_path / "a.csv")
    assert rows == sorted(a.rows, key=lambda r: r.path)
    assert [r.path for r in rows] == sorted(truth)  # every labelled file, no pred/
    assert a.meta["csv_sha256"] == D.split_sha256(tmp_path / "a.csv")
    assert D.read_split_meta(tmp_path / "a.csv")["seed"] == 1
    split_of = {}
    for r in rows:  # every slice's copies in one split (and one hospital)
        split_of.setdefault(truth[r.path], set()).add((r.split, r.hospital))
    assert all(len(v) == 1 for v in split_of.values())
    with open(tmp_path / "a.csv", newline="") as f:  # plain CSV for csv / pandas
        assert len(list(csv.DictReader(f))) == len(truth)


def test_read_split_rejects_bad_files(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("path,label\nno/a.png,0\n")
    with pytest.raises(D.DataError, match="header"):
        D.read_split(p)
    p.write_text("path,sha256,label,split,hospital,group\nno/a.png," + "0" * 64 + ",0,holdout,-1,0\n")
    with pytest.raises(D.DataError, match="line 2"):
        D.read_split(p)
    p.write_text("path,sha256,label,split,hospital,group\n../a.png," + "0" * 64 + ",0,test,-1,0\n")
    with pytest.raises(D.DataError, match="relative"):
        D.read_split(p)


def test_shift_recorded_when_on(synth, tmp_path):
    root, _ = synth
    off = _small_split(root, tmp_path / "off.csv")
    on = _small_split(root, tmp_path / "on.csv", shift=True)
    assert off.meta["shift"] is None
    assert on.meta["shift"] == {str(h): D.hospital_shift(h, 0) for h in range(3)}
    assert (tmp_path / "off.csv").read_bytes() == (tmp_path / "on.csv").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# acquisition shift


def test_hospital_shift_deterministic_and_in_range():
    a, b = D.hospital_shift(2, seed=7), D.hospital_shift(2, seed=7)
    assert a == b and a != D.hospital_shift(3, seed=7) and a != D.hospital_shift(2, seed=8)
    for h in range(20):
        p = D.hospital_shift(h)
        assert 0.8 <= p["contrast"] <= 1.25 and 0.75 <= p["gamma"] <= 1.3
        assert 0 <= p["noise_sigma"] <= 0.03 and 0 <= p["blur_sigma"] <= 1


def test_apply_acquisition_shift_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32)).astype(np.float32)
    assert np.allclose(D.apply_acquisition_shift(x, {}, None), x)
    p = {"contrast": 1.1, "gamma": 0.9, "noise_sigma": 0.0, "blur_sigma": 0.8}
    y_np = D.apply_acquisition_shift(x, p, None)
    y_t = D.apply_acquisition_shift(torch.from_numpy(x).unsqueeze(1), p, None)
    assert y_t.shape == (2, 1, 32, 32) and np.allclose(y_t.squeeze(1).numpy(), y_np, atol=1e-5)
    assert y_np.std() < x.std()  # blurred
    p["noise_sigma"] = 0.02
    n1 = D.apply_acquisition_shift(x, p, np.random.default_rng(1))
    n2 = D.apply_acquisition_shift(x, p, np.random.default_rng(1))
    assert np.array_equal(n1, n2) and n1.min() >= 0 and n1.max() <= 1
    g = torch.Generator().manual_seed(0)
    t = D.apply_acquisition_shift(torch.from_numpy(x), p, g)
    assert t.dtype == torch.float32 and 0 <= float(t.min()) and float(t.max()) <= 1
    with pytest.raises(ValueError, match="rng"):
        D.apply_acquisition_shift(x, p, None)


# ---------------------------------------------------------------------------------------------------------
# cache and verified loading


def test_cache_round_trip_and_verified_loading(synth, tmp_path):
    root, truth = synth
    _small_split(root, tmp_path / "s.csv")
    cache = D.build_cache(root, tmp_path / "s.csv", tmp_path / "c.npz", size=64)
    again = D.load_cache(tmp_path / "c.npz", split_csv=tmp_path / "s.csv")
    assert again.images.dtype == np.uint8 and again.images.shape == (len(truth), 64, 64)
    for name in ("images", "labels", "paths", "sha256", "split", "hospital", "group"):
        assert np.array_equal(getattr(cache, name), getattr(again, name)), name
    with np.load(tmp_path / "c.npz") as z:  # a standard .npz, no pickle
        assert z["images"].shape == again.images.shape and z["labels"].dtype == np.int64
    x, y = again.select("test")
    assert x.shape == (int((again.split == "test").sum()), 1, 64, 64) and x.dtype.is_floating_point
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and y.dtype.is_signed
    expected = int(((again.split != "test") & (again.hospital == 0)).sum())
    assert len(again.subset(["train", "val"], hospital=0)) == expected
    assert again.hospitals == [0, 1, 2]
    test = D.load_split_scans(root, tmp_path / "s.csv", split="test", size=64)
    m = again.split == "test"
    assert np.array_equal(test.images, again.images[m]) and list(test.paths) == list(again.paths[m])
    D.build_cache(root, tmp_path / "s.csv", tmp_path / "c2.npz", size=64)
    assert (tmp_path / "c.npz").read_bytes() == (tmp_path / "c2.npz").read_bytes()  # reproducible bytes


def test_sha256_mismatch_names_the_file(synth, tmp_path):
    root, _ = synth
    work = tmp_path / "data"
    shutil.copytree(root, work)
    res = _small_split(work, tmp_path / "s.csv")
    victim = next(r for r in res.rows if r.split == "test")
    img = np.asarray(Image.open(work / victim.path), dtype=np.float32) / 255
    _save(work / victim.path, img * 0.5)
    with pytest.raises(D.DataError, match=f"{victim.path}: sha256 mismatch"):
        D.load_split_scans(work, tmp_path / "s.csv", split="test")
    with pytest.raises(D.DataError, match=f"{victim.path}: sha256 mismatch"):
        D.build_cache(work, tmp_path / "s.csv", tmp_path / "c.npz")
    (work / victim.path).unlink()
    with pytest.raises(D.DataError, match=victim.path):
        D.load_split_scans(work, tmp_path / "s.csv", split="test")
    # other splits still load
    assert len(D.load_split_scans(work, tmp_path / "s.csv", split="train", size=32)) > 0


def test_cache_from_other_split_rejected(synth, tmp_path):
    root, _ = synth
    _small_split(root, tmp_path / "a.csv", seed=1)
    _small_split(root, tmp_path / "b.csv", seed=2)
    D.build_cache(root, tmp_path / "a.csv", tmp_path / "a.npz", size=32)
    with pytest.raises(D.DataError, match="different split"):
        D.load_cache(tmp_path / "a.npz", split_csv=tmp_path / "b.csv")


# ---------------------------------------------------------------------------------------------------------
# folder check and CLI


def test_check_reports_corrupt_file_alone(tmp_path, examples_dir, capsys):
    for name in ("y1349.jpg", "y1431.jpg"):
        (tmp_path / "yes").mkdir(exist_ok=True)
        shutil.copy(examples_dir / name, tmp_path / "yes" / name)
    (tmp_path / "no").mkdir()
    for name in ("no35.jpg", "no411.jpg"):
        shutil.copy(examples_dir / name, tmp_path / "no" / name)
    shutil.copy(examples_dir / "no35.jpg", tmp_path / "no" / "copy.jpg")
    data = (examples_dir / "no427.jpg").read_bytes()
    (tmp_path / "no" / "broken.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "no" / "garbage.jpg").write_bytes(b"not an image at all")
    rep = D.check_folder(tmp_path)
    assert set(rep.errors) == {"no/broken.jpg", "no/garbage.jpg"}
    assert all(msg.startswith(path) for path, msg in rep.errors.items())
    assert rep.class_counts == {"no": 3, "yes": 2} and rep.exact_copies == 1

    assert cli_main(["data", "check", "--data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "unreadable: no/broken.jpg" in out and "unreadable: no/garbage.jpg" in out
    (tmp_path / "no" / "broken.jpg").unlink()
    (tmp_path / "no" / "garbage.jpg").unlink()
    assert cli_main(["data", "check", "--data", str(tmp_path)]) == 0


def test_cli_split_and_cache(synth, tmp_path, capsys):
    root, truth = synth
    out = tmp_path / "split.csv"
    argv = ["data", "split", "--data", str(root), "--out", str(out), "--hospitals", "3", "--min-train", "4",
            "--min-val", "1", "--seed", "4"]  # fmt: skip
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "no_tumour" in text and "hospital" in text and "test" in text
    assert len(D.read_split(out)) == len(truth) and (tmp_path / "split.json").is_file()
    assert cli_main(["data", "cache", "--data", str(root), "--split", str(out), "--out",
                     str(tmp_path / "c.npz"), "--size", "32"]) == 0  # fmt: skip
    assert "MB" in capsys.readouterr().out
    assert cli_main(argv[:-2] + ["--hospitals", "50"]) == 2  # impossible partition: clear error
    assert "too few scans" in capsys.readouterr().err
    assert cli_main(["data", "split", "--data", str(root), "--out", str(out), "--classes", "bad"]) == 2


# ---------------------------------------------------------------------------------------------------------
# the real Br35H data set


@pytest.fixture(scope="module")
def br35h_split(tmp_path_factory):
    if not (BR35H / "yes").is_dir():
        pytest.skip("Br35H data set not found at ../shared/data/br35h")
    out = tmp_path_factory.mktemp("br35h") / "split.csv"
    return D.split_folder(BR35H, out)


def _reference_groups(labelled: set[str]) -> list[set[str]]:
    """Union-find over DUPLICATES.tsv pairs (labelled files only). The package never reads this file."""
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    with open(BR35H / "DUPLICATES.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            a, b = row["path_a"], row["path_b"]
            if a in labelled and b in labelled:
                parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), set()).add(x)
    return list(groups.values())


def test_br35h_reference_duplicates_stay_in_one_group_and_split(br35h_split):
    rows = {r.path: r for r in br35h_split.rows}
    assert len(rows) == 3000 and not any(p.startswith("pred/") for p in rows)
    ref = _reference_groups(set(rows))
    assert len(ref) > 400
    for g in ref:
        assert len({rows[p].group for p in g}) == 1, sorted(g)[:3]
        assert len({(rows[p].split, rows[p].hospital) for p in g}) == 1
    meta = br35h_split.meta
    assert meta["duplicates"]["largest_group"] <= 100  # no giant group that would break stratification
    assert meta["duplicates"]["mixed_label_groups"] == 0
    assert sum(meta["counts"]["split"]["test"].values()) == 600
    for h in meta["counts"]["hospital"].values():
        assert sum(h["train"].values()) >= D.DEFAULT_MIN_TRAIN and sum(h["val"].values()) >= D.DEFAULT_MIN_VAL


@pytest.mark.slow
def test_br35h_split_reproducible_and_cache_size(br35h_split, tmp_path):
    again = D.split_folder(BR35H, tmp_path / "split.csv")
    assert again.csv_path.read_bytes() == br35h_split.csv_path.read_bytes()
    cache = D.build_cache(BR35H, again.csv_path, tmp_path / "cache.npz")
    assert len(cache) == 3000
    assert (tmp_path / "cache.npz").stat().st_size < 25e6
