"""Checkpoint layout, manifest, Hub resolution and the push/pull commands, with no network at all.

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once, when it is first imported, so the fixtures patch
its `constants` as well as the environment. Its request hook checks that offline flag before every HTTP
request, so any call these tests did not expect fails with OfflineModeIsEnabled instead of reaching a server.
"""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from medfedpure import hub
from medfedpure.cli import main

REV = "3f2a1c0" + "d" * 33  # a 40-hex commit hash
REPO = "user/name"


def make_checkpoint(folder):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    hub.save_weights(folder / "classifier", layer.state_dict(), {"in_features": 3, "out_features": 2})
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test checkpoint\n")
    (folder / "split.csv").write_text("file,split\na.png,train\n")
    hub.write_manifest(folder)
    return layer.state_dict()


def cache_snapshot(cache, folder, repo_id=REPO, rev=REV):
    """Write `folder` into the cache exactly as huggingface_hub lays it out: blobs, snapshot symlinks, refs."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / rev / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(rev)  # no newline: huggingface_hub reads the ref verbatim
    return storage / "snapshots" / rev


@pytest.fixture
def env(tmp_path, monkeypatch):
    from huggingface_hub import constants

    home, cache = tmp_path / "hf", tmp_path / "hf" / "hub"
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("HF_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # blocks every HTTP request, whatever hub.py decides
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    make_checkpoint(bundled)
    monkeypatch.setattr(hub, "BUNDLED_DIR", bundled)
    source = tmp_path / "source"
    source.mkdir()
    return {"cache": cache, "bundled": bundled, "source": source, "weights": make_checkpoint(source)}


# --------------------------------------------------------------------------------------------- layout
def test_save_load_roundtrip_and_manifest(tmp_path):
    state = make_checkpoint(tmp_path)
    loaded, config = hub.load_weights(tmp_path / "classifier")
    assert config == {"in_features": 3, "out_features": 2}
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    lines = (tmp_path / hub.MANIFEST_NAME).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == sorted(
        ["README.md", "classifier/config.json", "classifier/model.safetensors", "split.csv"])
    hub.verify_manifest(tmp_path)
    assert hub.resolve_model(tmp_path).origin == "local"


def test_verify_manifest_failures(tmp_path):
    make_checkpoint(tmp_path)
    hub.save_weights(tmp_path / "stray", {"w": torch.zeros(1)}, {})
    with pytest.raises(hub.ChecksumError, match="stray/model.safetensors.*not listed"):
        hub.verify_manifest(tmp_path)
    (tmp_path / hub.MANIFEST_NAME).unlink()
    with pytest.raises(hub.ChecksumError, match=hub.MANIFEST_NAME):
        hub.verify_manifest(tmp_path)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:  # would create `marker` if anything unpickled the file
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(hub.ModelSourceError, match="pickle.*pytorch_model.bin"):
        hub.load_weights(tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- resolving
@pytest.mark.parametrize("revision", [REV, None])
def test_offline_cache_loads_through_snapshot_download(env, monkeypatch, revision):
    import huggingface_hub

    snapshot = cache_snapshot(env["cache"], env["source"])
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    resolved = hub.resolve_model(REPO, revision=revision)
    assert calls == [((REPO,), {"revision": revision, "allow_patterns": hub.ALLOWED_PATTERNS,
                                "local_files_only": True})]
    assert (resolved.origin, resolved.path, resolved.revision) == ("hub-cache", snapshot, REV)
    assert "3f2a1c0" in resolved.description and "local cache" in resolved.description
    assert ("not pinned" in resolved.description) == (revision is None)
    loaded, _ = hub.load_weights(resolved.path / "classifier")
    assert all(torch.equal(loaded[k], v) for k, v in env["weights"].items())


def test_tampered_cache_raises_checksum_error(env):
    snapshot = cache_snapshot(env["cache"], env["source"])
    weights = snapshot / "classifier" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # writes through the symlink into the blob
    with pytest.raises(hub.ChecksumError, match="classifier/model.safetensors.*expected"):
        hub.resolve_model(REPO, revision=REV)  # no fallback to bundled on a checksum failure


def test_not_cached_offline_falls_back_or_fails(env):
    resolved = hub.resolve_model(REPO, revision=REV)
    assert (resolved.origin, resolved.path) == ("bundled", env["bundled"])
    assert REPO in resolved.description and "could not be reached" in resolved.description
    assert "bundled" in resolved.description
    with pytest.raises(hub.ModelSourceError, match="not in|no complete copy"):
        hub.resolve_model(REPO, revision=REV, fallback_to_bundled=False)


def test_network_failure_uses_cache_then_bundled(env, monkeypatch):
    # "Online" for hub.py, but the library's offline flag makes the request fail like a dropped connection.
    monkeypatch.setattr(hub, "_offline", lambda: False)
    resolved = hub.resolve_model(REPO, revision=REV)
    assert resolved.origin == "bundled" and "OfflineModeIsEnabled" in resolved.description
    cache_snapshot(env["cache"], env["source"])
    resolved = hub.resolve_model(REPO)
    assert resolved.origin == "hub-cache" and "Hub unreachable" in resolved.description


def test_bad_sources():
    with pytest.raises(hub.ModelSourceError, match="user/name"):
        hub.resolve_model("not a repo id")


# --------------------------------------------------------------------------------------------- push
@pytest.fixture
def fake_hub(env, monkeypatch):
    from huggingface_hub import CommitInfo, HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(kwargs, repo_id=repo_id)

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs
        return CommitInfo(f"https://huggingface.co/{kwargs['repo_id']}/commit/{REV}", "msg", "", oid=REV)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    return calls


def test_push_folder_uploads_only_allowed_files(env, fake_hub):
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    folder = env["source"]
    (folder / "evil.pt").write_bytes(b"not uploaded")
    (folder / ".env").write_text("SECRET=1")
    (folder / "figure.png").write_bytes(b"png")  # added after the manifest was written: push must list it
    commit = hub.push_folder(folder, REPO, private=True, commit_message="v1", token="hf_test")
    assert commit.oid == REV and REV in commit

    assert fake_hub["create_repo"]["repo_id"] == REPO and fake_hub["create_repo"]["private"] is True
    upload = fake_hub["upload_folder"]
    assert (upload["repo_id"], upload["commit_message"]) == (REPO, "v1")
    # Apply the same filter upload_folder applies to see what would really leave the machine.
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    sent = set(filter_repo_objects(files, allow_patterns=upload["allow_patterns"],
                                   ignore_patterns=upload["ignore_patterns"] + DEFAULT_IGNORE_PATTERNS))
    assert "evil.pt" not in sent and ".env" not in sent
    listed = {line.split("  ")[1] for line in (folder / hub.MANIFEST_NAME).read_text().splitlines()}
    assert "figure.png" in listed and sent == listed | {hub.MANIFEST_NAME}
    hub.verify_manifest(folder)


def test_push_cli(env, fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("MY_TOKEN", "hf_secret_value")
    assert main(["push", "--repo-id", REPO, "--folder", str(env["source"]), "--token-env", "MY_TOKEN"]) == 0
    out = capsys.readouterr().out
    assert REV in out and "hf_secret_value" not in out
    assert fake_hub["create_repo"]["private"] is False


@pytest.mark.parametrize("case", ["missing", "empty", "no-token"])
def test_push_cli_errors(env, fake_hub, tmp_path, capsys, case):
    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
        (folder / "evil.pt").write_bytes(b"x")
    elif case == "no-token":
        folder = env["source"]
    assert main(["push", "--repo-id", REPO, "--folder", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert {"missing": "no checkpoint folder", "empty": "no checkpoint files", "no-token": "HF_TOKEN"}[case] in err
    assert "upload_folder" not in fake_hub


# --------------------------------------------------------------------------------------------- pull
def test_pull_cli(env, capsys):
    snapshot = cache_snapshot(env["cache"], env["source"])
    assert main(["pull", "--repo-id", REPO, "--revision", REV]) == 0
    out = capsys.readouterr().out
    assert str(snapshot) in out and REV in out

    assert main(["pull", "--repo-id", "user/absent"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "user/absent" in err and "\n" not in err
