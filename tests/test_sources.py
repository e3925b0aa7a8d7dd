"""Several sources in one split: declarations, cross-source groups, sites as hospitals, leave-one-site-out,
class mappings of external folders, and the train command's split of the user's own folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from medfedpure import data as D
from medfedpure import sources as S
from medfedpure.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT / ".." / "shared" / "data"


def _have_all_sources() -> bool:
    return all((SHARED / name / "MANIFEST.tsv").is_file()
               for name in ("br35h", "nickparvar_tumour", "tcga_lgg_flair", "ixi_t1_healthy"))


needs_data = pytest.mark.skipif(not _have_all_sources(), reason="the four sources are not at ../shared/data")


# ---------------------------------------------------------------------------------------------------------
# declarations


def test_shipped_sources_declaration():
    sources = S.load_sources(S.DEFAULT_SOURCES)
    assert [s.name for s in sources] == ["br35h", "nickparvar_tumour", "tcga_lgg_flair", "ixi_t1_healthy"]
    nick = sources[1]
    assert nick.classes["Training/glioma"] == (1, "glioma")
    assert sources[0].classes == {"no": (0, ""), "yes": (1, "")}  # Br35H tumours have no type
    assert sources[2].group == "patient" and sources[2].hospitals == "site"
    ixi = sources[3]
    assert ixi.slices_per_plane > 0 and set(ixi.planes) == {"axial", "coronal", "sagittal"}
    assert ixi.group == "patient" and ixi.group_column == "subject" and ixi.classes == {"volumes": (0, "")}


@pytest.mark.parametrize("text, message", [
    ('[[source]]\nname="a"\nfolder="a"\nclasses={no="no_tumour"}\ncolour="x"\n', "unknown key"),
    ('[[source]]\nname="a"\nfolder="a"\nclasses={no="cancer"}\n', "expected no_tumour"),
    ('[[source]]\nname="a"\nfolder="a"\nclasses={no="no_tumour:glioma"}\n', "tumour type"),
    ('[[source]]\nname="a"\nfolder="a"\nclasses={no="no_tumour"}\ngroup="patient"\n', "labels_file"),
    ('[[source]]\nname="a"\nfolder="a"\nclasses={no="no_tumour"}\nhospitals="site"\n', "site_column"),
    ("nothing here", "not valid TOML"),
])
def test_bad_declarations_are_named(tmp_path, text, message):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(D.DataError, match=message):
        S.load_sources(f)


def test_class_map_forms():
    m = S.parse_class_map("glioma,meningioma,pituitary=tumour notumor=no_tumour")
    assert m == {"glioma": (1, "glioma"), "meningioma": (1, "meningioma"), "pituitary": (1, "pituitary"),
                 "notumor": (0, "")}
    assert S.parse_class_map("no=0,yes=1") == {"no": (0, ""), "yes": (1, "")}
    assert S.parse_class_map("Testing/x=tumour:pituitary") == {"Testing/x": (1, "pituitary")}
    with pytest.raises(ValueError, match="expected"):
        S.parse_class_map("glioma")
    with pytest.raises(ValueError, match="twice"):
        S.parse_class_map("a=tumour a=no_tumour")


def test_detect_class_map_of_the_four_class_layout(tmp_path):
    for sub in ("Testing/glioma", "Testing/notumor", "Testing/pituitary"):
        (tmp_path / sub).mkdir(parents=True)
    assert S.detect_class_map(tmp_path) == {"Testing/glioma": (1, "glioma"), "Testing/notumor": (0, ""),
                                            "Testing/pituitary": (1, "pituitary")}
    (tmp_path / "other").mkdir()
    with pytest.raises(D.DataError, match="no known class folders"):
        S.detect_class_map(tmp_path / "other")


# ---------------------------------------------------------------------------------------------------------
# a small real multi-source folder: a sample of each source with its tables


def _sample_sources(dst: Path) -> None:
    rng = np.random.default_rng(0)
    # Br35H: 40 + 40 files
    for cls in ("no", "yes"):
        files = sorted((SHARED / "br35h" / cls).iterdir())
        (dst / "br35h" / cls).mkdir(parents=True)
        for f in [files[i] for i in rng.choice(len(files), 40, replace=False)]:
            shutil.copyfile(f, dst / "br35h" / cls / f.name)
    shutil.copyfile(SHARED / "br35h" / "DUPLICATES.tsv", dst / "br35h" / "DUPLICATES.tsv")
    # Nickparvar: 30 per type, including both files of some mirror pairs from DUPLICATES.tsv
    dups = list(csv.DictReader(open(SHARED / "nickparvar_tumour" / "DUPLICATES.tsv"), delimiter="\t"))
    keep: set[str] = set()
    for kind in ("glioma", "meningioma", "pituitary"):
        pairs = [d for d in dups if f"/{kind}/" in d["path_a"]][:5]
        keep |= {d["path_a"] for d in pairs} | {d["path_b"] for d in pairs}
        files = sorted((SHARED / "nickparvar_tumour" / "Training" / kind).iterdir())
        keep |= {f"Training/{kind}/{files[i].name}" for i in rng.choice(len(files), 20, replace=False)}
    for rel in keep:
        (dst / "nickparvar_tumour" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / "nickparvar_tumour" / rel, dst / "nickparvar_tumour" / rel)
    shutil.copyfile(SHARED / "nickparvar_tumour" / "DUPLICATES.tsv", dst / "nickparvar_tumour" / "DUPLICATES.tsv")
    # TCGA: 8 patients per site, every file of theirs, and their LABELS rows
    labels = list(csv.DictReader(open(SHARED / "tcga_lgg_flair" / "LABELS.tsv"), delimiter="\t"))
    chosen = set()
    for site in ("DU", "HT"):
        chosen |= set(sorted({r["patient"] for r in labels if r["site"] == site})[:8])
    rows = [r for r in labels if r["patient"] in chosen]
    for r in rows:
        (dst / "tcga_lgg_flair" / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / "tcga_lgg_flair" / r["path"], dst / "tcga_lgg_flair" / r["path"])
    with open(dst / "tcga_lgg_flair" / "LABELS.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(labels[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    # IXI: 6 subjects' volumes and their MANIFEST rows
    manifest = list(csv.DictReader(open(SHARED / "ixi_t1_healthy" / "MANIFEST.tsv"), delimiter="\t"))[:6]
    (dst / "ixi_t1_healthy" / "volumes").mkdir(parents=True)
    for r in manifest:
        shutil.copyfile(SHARED / "ixi_t1_healthy" / r["path"], dst / "ixi_t1_healthy" / r["path"])
    with open(dst / "ixi_t1_healthy" / "MANIFEST.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(manifest[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(manifest)


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    if not _have_all_sources():
        pytest.skip("the three sources are not at ../shared/data")
    root = tmp_path_factory.mktemp("sources")
    _sample_sources(root)
    return root


def _split(root, out, **kw):
    kw = {"hospitals": 5, "min_train": 3, "min_val": 1, **kw}
    return S.split_sources(root, S.load_sources(S.DEFAULT_SOURCES), out, **kw)


@needs_data
def test_volumes_give_brain_slices_in_every_plane_grouped_by_subject(sample_root, tmp_path):
    src = [s for s in S.load_sources(S.DEFAULT_SOURCES) if s.name == "ixi_t1_healthy"]
    records = S.list_sources(sample_root, src)
    per = src[0].slices_per_plane
    assert len(records) == 6 * 3 * per  # six subjects, three planes
    planes = {r.path.partition("#")[2].partition("=")[0] for r in records}
    assert planes == {"axial", "coronal", "sagittal"}
    assert len({r.patient for r in records}) == 6 and all(r.site == "HH" and r.label == 0 for r in records)
    # a slice path reads like any scan: the volume's sha256, a 128-px image with the head in it
    sha, img, err = D._read_one((str(sample_root), records[0].path, 128))
    volume = records[0].path.partition("#")[0]
    assert err is None and sha == D.file_sha256(sample_root / volume)
    assert img.shape == (128, 128) and img.mean() > 8  # not a blank frame
    res = _split(sample_root, tmp_path / "split.csv")
    by_subject: dict = {}
    for r in res.rows:
        if r.source == "ixi_t1_healthy":
            by_subject.setdefault(r.group, set()).add((r.split, r.hospital))
    assert len(by_subject) == 6 and all(len(v) == 1 for v in by_subject.values())  # a subject never straddles


@needs_data
def test_split_records_source_site_and_type(sample_root, tmp_path):
    res = _split(sample_root, tmp_path / "split.csv")
    rows = D.read_split(tmp_path / "split.csv")
    assert len(rows) == len(res.rows)
    assert {r.source for r in rows} == {"br35h", "nickparvar_tumour", "tcga_lgg_flair", "ixi_t1_healthy"}
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == ",".join(D.SOURCE_COLUMNS)
    for r in rows:
        assert r.path.split("/", 1)[0] == r.source  # each source's folder has its name
        assert (r.tumour_type != "") == (r.source == "nickparvar_tumour")
        assert (r.site != "") == (r.source in ("tcga_lgg_flair", "ixi_t1_healthy"))  # the sources naming sites
    # every group (duplicates, mirror pairs, patients) lies in one split and one hospital
    by_group: dict[int, set] = {}
    for r in rows:
        by_group.setdefault(r.group, set()).add((r.split, r.hospital))
    assert all(len(v) == 1 for v in by_group.values())
    patients: dict[str, set] = {}
    labels = {r["path"]: r["patient"] for r in csv.DictReader(open(sample_root / "tcga_lgg_flair" / "LABELS.tsv"),
                                                                delimiter="\t")}  # fmt: skip
    for r in rows:
        if r.source == "tcga_lgg_flair":
            patients.setdefault(labels[r.path.split("/", 1)[1]], set()).add(r.group)
    assert all(len(g) == 1 for g in patients.values())
    # the two TCGA sites are hospitals of their own; the other sources fill hospitals 0..2
    site_h = {r.site: r.hospital for r in rows if r.site and r.hospital >= 0 and r.source == "tcga_lgg_flair"}
    assert sorted(site_h.values()) == [3, 4] and site_h["DU"] == 3
    assert {r.hospital for r in rows if r.source != "tcga_lgg_flair" and r.hospital >= 0} <= {0, 1, 2}
    assert {r.split for r in rows if r.source == "tcga_lgg_flair"} == {"train", "val", "test"}
    counts = res.meta["source_counts"]["source"]
    assert counts["nickparvar_tumour"].get("train", {}).get("no_tumour", 0) == 0
    # byte-identical for the same seed
    _split(sample_root, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "split.csv").read_bytes()


@needs_data
def test_mirror_pairs_of_the_duplicates_table_stay_together(sample_root, tmp_path):
    _split(sample_root, tmp_path / "split.csv")
    rows = {r.path: r for r in D.read_split(tmp_path / "split.csv")}
    dups = csv.DictReader(open(sample_root / "nickparvar_tumour" / "DUPLICATES.tsv"), delimiter="\t")
    checked = 0
    for d in dups:
        a, b = rows.get("nickparvar_tumour/" + d["path_a"]), rows.get("nickparvar_tumour/" + d["path_b"])
        if a and b:
            assert a.group == b.group and a.split == b.split
            checked += 1
    assert checked >= 10


@needs_data
def test_leave_one_site_out_puts_the_site_in_test_only(sample_root, tmp_path):
    res = _split(sample_root, tmp_path / "loso.csv", hold_out=[("tcga_lgg_flair", "HT")])
    rows = D.read_split(tmp_path / "loso.csv")
    ht = [r for r in rows if r.site == "HT"]
    assert ht and all(r.split == "test" and r.hospital == -1 for r in ht)
    assert res.meta["hospitals"] == 4 and res.meta["held_out"] == ["tcga_lgg_flair:HT"]
    with pytest.raises(D.DataError, match="not found"):
        _split(sample_root, tmp_path / "x.csv", hold_out=[("tcga_lgg_flair", "XX")])


@needs_data
def test_cache_of_a_multi_source_split_keeps_source_and_type(sample_root, tmp_path):
    _split(sample_root, tmp_path / "split.csv")
    cache = D.build_cache(sample_root, tmp_path / "split.csv", tmp_path / "c.npz", size=64)
    again = D.load_cache(tmp_path / "c.npz")
    assert set(again.source.tolist()) == {"br35h", "nickparvar_tumour", "tcga_lgg_flair", "ixi_t1_healthy"}
    nick = again.source == "nickparvar_tumour"
    assert (again.tumour_type[nick] >= 0).all() and (again.tumour_type[~nick] == -1).all()
    assert np.array_equal(cache.tumour_type, again.tumour_type)


@needs_data
def test_data_commands_print_counts_per_source(sample_root, tmp_path, capsys):
    code = cli_main(["data", "split", "--sources", str(S.DEFAULT_SOURCES), "--data", str(sample_root), "--out",
                     str(tmp_path / "s.csv"), "--hospitals", "5", "--min-train", "3", "--min-val", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "nickparvar_tumour" in out and "tcga_lgg_flair" in out and "hospital" in out
    assert cli_main(["data", "check", "--sources", str(S.DEFAULT_SOURCES), "--data", str(sample_root)]) == 0
    out = capsys.readouterr().out
    assert "br35h:" in out and "tumour:glioma" in out and "groups hold copies across sources" in out
    assert cli_main(["data", "split", "--data", str(sample_root), "--out", str(tmp_path / "t.csv"),
                     "--hold-out", "tcga_lgg_flair:HT"]) == 2  # --hold-out needs --sources


@needs_data
def test_external_folder_in_the_four_class_layout(sample_root, tmp_path):
    from medfedpure.evaluation import load_scans

    ext = tmp_path / "ext" / "Testing"
    for kind in ("glioma", "pituitary"):
        (ext / kind).mkdir(parents=True)
        for f in sorted((sample_root / "nickparvar_tumour" / "Training" / kind).iterdir())[:4]:
            shutil.copyfile(f, ext / kind / f.name)
    (ext / "notumor").mkdir()
    for f in sorted((sample_root / "br35h" / "no").iterdir())[:5]:
        shutil.copyfile(f, ext / "notumor" / f.name)
    scans = load_scans(tmp_path / "ext", "all")
    assert len(scans) == 13 and int(scans.labels.sum()) == 8
    assert sorted(set(scans.tumour_type.tolist())) == [-1, 0, 2]
    assert scans.info["classes"]["Testing/notumor"] == "no_tumour"
    explicit = load_scans(tmp_path / "ext", "all", classes="Testing/glioma=tumour Testing/notumor=no_tumour")
    assert len(explicit) == 9


# ---------------------------------------------------------------------------------------------------------
# train without --split: a split of the user's own folder, never the bundled Br35H one


def test_train_without_split_makes_a_split_of_that_folder(tmp_path, monkeypatch, br35h_dir):
    from medfedpure.commands import train

    data = tmp_path / "mydata"
    for cls in ("no", "yes"):
        (data / cls).mkdir(parents=True)
        for f in sorted((br35h_dir / cls).iterdir())[:70]:
            shutil.copyfile(f, data / cls / f.name)
    monkeypatch.setattr(train, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    split, cache = train.prepare_data(str(data), None, None, seed=0, hospitals=2)
    rows = D.read_split(split)
    assert len(rows) == 140 and all((data / r.path).is_file() for r in rows)
    assert split.parent == tmp_path / "cache" and cache.is_file()
    # a second call reuses the same files; another folder gets another split
    assert train.prepare_data(str(data), None, None, seed=0, hospitals=2)[0] == split
    assert train.split_hospitals(split) == 2
    assert train.default_split_path(str(tmp_path / "other"), None, 0) != split
    with pytest.raises(D.DataError, match="split file not found"):
        train.prepare_data(str(data), str(tmp_path / "missing.csv"), None, seed=0)
