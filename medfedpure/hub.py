"""One checkpoint layout for `pretrained/` and the Hugging Face Hub: resolve, verify, load, save, push.

A checkpoint folder is a Hub model repository on disk (see the layout in the README): safetensors weights,
a `config.json` per model, a model card, the data split and `MANIFEST.sha256`. Whatever the source (bundled
copy, local folder, Hub, Hub cache), the folder is checked against its manifest before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is heavy: import it only where tensors are touched
    import torch

__all__ = [
    "ALLOWED_PATTERNS", "BUNDLED_DIR", "MANIFEST_NAME", "ChecksumError", "ModelSourceError", "ResolvedModel",
    "load_weights", "pull", "push_folder", "resolve_model", "save_weights", "verify_manifest", "write_manifest",
]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
MANIFEST_NAME = "MANIFEST.sha256"
# What is uploaded, downloaded and listed in the manifest. Pickle formats are never part of it, so nothing
# fetched from the Hub can execute code when loaded.
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.csv", "*.sha256", "*.png", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# fnmatch's `*` crosses `/`: these skip hidden files and anything under a hidden folder (.git, .cache, ...).
_HIDDEN = [".*", "*/.*"]
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ChecksumError(RuntimeError):
    """A checkpoint file does not match its manifest (or the manifest is missing)."""


class ModelSourceError(RuntimeError):
    """No usable checkpoint could be found; the message says what was tried and why it failed."""


@dataclass
class ResolvedModel:
    path: Path
    origin: str  # "local" | "hub" | "hub-cache" | "bundled"
    repo_id: str | None = None
    revision: str | None = None  # the resolved commit hash for Hub sources
    description: str = ""


# --------------------------------------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # follows the snapshot -> blob symlinks of the HF cache
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Relative posix paths the manifest covers: exactly what `push_folder` uploads, minus the manifest."""
    from huggingface_hub.utils import filter_repo_objects  # the filter upload_folder itself applies

    rel = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
    kept = filter_repo_objects(rel, allow_patterns=ALLOWED_PATTERNS, ignore_patterns=_HIDDEN)
    return sorted(r for r in kept if r not in (MANIFEST_NAME, ".gitattributes"))


def write_manifest(folder: str | Path) -> Path:
    folder = Path(folder)
    files = _listed_files(folder)
    if not files:
        raise ModelSourceError(f"{folder}: no checkpoint files to list (looked for {', '.join(ALLOWED_PATTERNS)})")
    manifest = folder / MANIFEST_NAME
    manifest.write_text("".join(f"{_sha256(folder / rel)}  {rel}\n" for rel in files), encoding="utf-8")
    return manifest


def _read_manifest(manifest: Path) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        # Reject absolute or parent paths: a manifest must never make us read outside the folder.
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or rel.startswith("/") or ".." in rel.split("/"):
            raise ChecksumError(f"{manifest}: malformed line {number}: {line!r}")
        entries[rel] = digest
    return entries


def verify_manifest(folder: str | Path) -> None:
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise ChecksumError(f"{folder}: no {MANIFEST_NAME}, so its files cannot be verified; refusing to load it")
    entries = _read_manifest(manifest)
    for rel, expected in entries.items():
        path = folder / rel
        if not path.is_file():
            raise ChecksumError(f"{rel}: listed in {MANIFEST_NAME} but missing from {folder}")
        actual = _sha256(path)
        if actual != expected:
            raise ChecksumError(f"{rel}: sha256 mismatch in {folder}: expected {expected}, got {actual}")
    # Weights that nobody vouched for are never loaded, even if every listed file is intact.
    for path in sorted(folder.glob("**/*.safetensors")):
        rel = path.relative_to(folder).as_posix()
        if rel not in entries:
            raise ChecksumError(f"{rel}: weight file in {folder} is not listed in {MANIFEST_NAME}")


# --------------------------------------------------------------------------------------------- weights
def save_weights(folder: str | Path, state_dict: dict[str, torch.Tensor], config: dict,
                 weights_name: str = "model.safetensors") -> None:
    from safetensors.torch import save_file

    if not weights_name.endswith(".safetensors"):
        raise ValueError(f"weights are saved as safetensors only, got {weights_name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}  # save_file needs contiguous
    save_file(tensors, str(folder / weights_name), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_weights(folder: str | Path, weights_name: str = "model.safetensors",
                 device: str = "cpu") -> tuple[dict, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not weights_name.endswith(".safetensors"):
        raise ValueError(f"weights are loaded from safetensors only, got {weights_name!r}")
    path = folder / weights_name
    if not path.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:  # never fall back to torch.load: unpickling a downloaded file can run arbitrary code
            raise ModelSourceError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}), which MedFedPure refuses to load; "
                f"convert them to {weights_name} with safetensors.torch.save_file in a trusted environment")
        raise ModelSourceError(f"no weights at {path}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"no config.json beside {path}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return load_file(str(path), device=device), config


# --------------------------------------------------------------------------------------------- sources
def _offline() -> bool:
    """Offline mode, read at call time: huggingface_hub fixes its own flag when it is first imported, so an
    HF_HUB_OFFLINE=1 set later would otherwise be ignored; either one switches us offline."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def _is_network_error(exc: Exception) -> bool:
    # OfflineModeIsEnabled is a ConnectionError; transport failures come from httpx2 (huggingface_hub's client).
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.split(".")[0].startswith("httpx")


def _snapshot(repo_id: str, revision: str | None, local_files_only: bool) -> Path:
    # The one call for both online and offline loads, so the cache is read exactly as a download fills it.
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOWED_PATTERNS,
                                  local_files_only=local_files_only))


def _hub_description(repo_id: str, revision: str | None, commit: str, note: str = "") -> str:
    notes = [note] if note else []
    if not (revision and _COMMIT_RE.fullmatch(revision)):
        notes.append(f"'{revision or 'main'}' is a branch or tag, not pinned: pass the commit hash to pin it")
    return f"Hugging Face Hub: {repo_id} @ {commit[:7]}" + (f" ({'; '.join(notes)})" if notes else "")


def _bundled(description: str | None = None) -> ResolvedModel:
    if not BUNDLED_DIR.is_dir():
        raise ModelSourceError(f"the bundled checkpoints are missing: no folder {BUNDLED_DIR}")
    return ResolvedModel(BUNDLED_DIR, "bundled", description=description
                         or f"bundled checkpoints ({BUNDLED_DIR.name}/ shipped with MedFedPure)")


def _from_hub(repo_id: str, revision: str | None, fallback_to_bundled: bool) -> ResolvedModel:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    why = "offline: HF_HUB_OFFLINE=1" if _offline() else None
    if why is None:
        try:
            # Probe first: snapshot_download silently serves the cache when the Hub is unreachable, and the
            # description must say whether the Hub was actually reached.
            HfApi().repo_info(repo_id, revision=revision)
            path = _snapshot(repo_id, revision, local_files_only=False)
            return ResolvedModel(path, "hub", repo_id, path.name, _hub_description(repo_id, revision, path.name))
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            # A typo or missing access is not a network failure: say so instead of silently using other weights.
            raise ModelSourceError(f"Hub repo {repo_id} (revision {revision or 'main'}) is not accessible: "
                                   f"{type(exc).__name__}; check the name, the revision and your token") from exc
        except LocalEntryNotFoundError as exc:  # failed mid-download and nothing complete in the cache
            why = f"Hub unreachable: {type(exc.__cause__ or exc).__name__}"
        except HfHubHTTPError as exc:
            if getattr(exc.response, "status_code", 0) < 500:
                raise ModelSourceError(f"Hub repo {repo_id}: {' '.join(str(exc).split())}") from exc
            why = f"Hub unavailable: HTTP {exc.response.status_code}"
        except Exception as exc:
            if not _is_network_error(exc):
                raise
            why = f"Hub unreachable: {type(exc).__name__}"
    try:
        path = _snapshot(repo_id, revision, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        if not fallback_to_bundled:
            raise ModelSourceError(f"cannot load Hub repo {repo_id} at revision {revision or 'main'} ({why}): "
                                   f"no complete copy in the local Hugging Face cache {constants.HF_HUB_CACHE}") from exc
        return _bundled(f"Hugging Face Hub repo {repo_id} could not be reached ({why}) and is not in the local "
                        f"cache; using the bundled checkpoints ({BUNDLED_DIR.name}/) instead")
    return ResolvedModel(path, "hub-cache", repo_id, path.name,
                         _hub_description(repo_id, revision, path.name, f"from the local cache, {why}"))


def _check_repo_id(repo_id: str) -> str:
    if not _REPO_ID_RE.fullmatch(repo_id):
        raise ModelSourceError(f"{repo_id!r} is neither an existing folder nor a Hub repo id of the form user/name")
    return repo_id


def resolve_model(source: str | Path | None = None, revision: str | None = None, *,
                  fallback_to_bundled: bool = True) -> ResolvedModel:
    if source is None or str(source) == "pretrained":
        resolved = _bundled()
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser().resolve()
        resolved = ResolvedModel(path, "local", description=f"local folder {path}")
    elif isinstance(source, Path):
        raise ModelSourceError(f"no checkpoint folder at {source}")
    else:
        resolved = _from_hub(_check_repo_id(source), revision, fallback_to_bundled)
    verify_manifest(resolved.path)  # a checksum failure is raised, never answered with other weights
    return resolved


def pull(repo_id: str, revision: str | None = None) -> ResolvedModel:
    resolved = _from_hub(_check_repo_id(repo_id), revision, fallback_to_bundled=False)
    verify_manifest(resolved.path)
    return resolved


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, commit_message: str | None = None,
                token: str | None = None, revision: str | None = None) -> str:
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelSourceError(f"no checkpoint folder at {folder}")
    _check_repo_id(repo_id)
    write_manifest(folder)
    verify_manifest(folder)
    if not any(folder.glob("**/*.safetensors")):
        raise ModelSourceError(f"{folder} holds no *.safetensors weights: nothing worth pushing")
    if _offline():
        raise ModelSourceError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push to the Hub")
    token = token or get_token()
    if not token:
        raise ModelSourceError("no Hugging Face token: set HF_TOKEN to a token with write access "
                               "(https://huggingface.co/settings/tokens) or run `hf auth login`")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    # delete_patterns: the remote mirrors the folder, so stale weights cannot outlive the manifest that drops them.
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                             allow_patterns=list(ALLOWED_PATTERNS), ignore_patterns=list(_HIDDEN),
                             delete_patterns=list(ALLOWED_PATTERNS),
                             commit_message=commit_message or f"Upload MedFedPure checkpoints from {folder.name}/")
    return info  # CommitInfo is a str (the commit URL) that also carries .oid
