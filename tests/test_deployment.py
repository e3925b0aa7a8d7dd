"""The same Flower app on the deployment engine: a SuperLink and two SuperNodes on 127.0.0.1, `flwr run`.

Each SuperNode gets its own hospital's cache only (`--node-config "hospital=H data-path=..."`), as a real
site would. The helper must leave no process behind, including the ones Flower spawns in their own session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medfedpure import data as D
from medfedpure.checkpoint_format import read_config
from medfedpure.federated.deployment import LocalDeployment, Site, alive

REPO_ROOT = Path(__file__).resolve().parents[1]
VAL_SCANS = ("y1493.jpg", "no427.jpg")


def site_caches(root: Path, examples: Path, hospitals=(0, 1)) -> dict[int, Path]:
    """One split + cache per hospital from the example scans (4 train, 2 val each): what each site builds
    with `python -m medfedpure data cache` over its own scans."""
    out = {}
    for h in hospitals:
        rows = []
        for i, src in enumerate(sorted(f for f in examples.glob("*.jpg") if f.name.startswith(("no", "y")))):
            rel = f"h{h}/{src.name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / rel)
            rows.append(D.SplitRow(rel, D.file_sha256(root / rel), 1 if src.name.startswith("y") else 0,
                                   "val" if src.name in VAL_SCANS else "train", h, 100 * h + i))
        D.write_split(rows, root / f"split-{h}.csv")
        D.build_cache(root, root / f"split-{h}.csv", root / f"site-{h}.npz")
        out[h] = root / f"site-{h}.npz"
    return out


def test_run_config_puts_the_models_own_settings_in_set(tmp_path):
    from medfedpure.federated.deployment import app_run_config, write_run_config
    from medfedpure.federated.settings import parse_assignments

    config = app_run_config({"num-hospitals": 2, "out-dir": "out", "num-rounds": 1, "model-config": {"width": 4}})
    assert set(config) == {"num-hospitals", "out-dir", "set"}
    assert parse_assignments(config["set"]) == {"num-rounds": 1, "model-config": {"width": 4}}
    import tomllib

    written = tomllib.loads(write_run_config({"model": "mae", "lr": 0.01}, tmp_path / "r.toml").read_text())
    assert written["model"] == "mae" and parse_assignments(written["set"]) == {"lr": 0.01}


def test_site_node_config_quotes_paths():
    site = Site(hospital=3, data_path="/data/site 3/cache.npz")
    assert site.node_config() == "hospital=3 data-path='/data/site 3/cache.npz'"


def test_deployment_stops_everything_on_error(tmp_path, examples_dir):
    caches = site_caches(tmp_path / "data", examples_dir, hospitals=(0,))
    dep = LocalDeployment([Site(0, str(caches[0]))], tmp_path / "deploy", cwd=tmp_path)
    seen: set[int] = set()
    with pytest.raises(KeyError):
        with dep:
            seen = dep.process_tree()
            assert len(seen) >= 2  # superlink, its superexec, the supernode (its superexec starts later)
            assert (dep.flwr_home / "config.toml").read_text().count(dep.address) == 1
            raise KeyError("boom")
    assert seen and not [p for p in seen if alive(p)]
    assert not dep.process_tree()


@pytest.mark.slow
def test_deployment_engine_trains_and_saves(tmp_path, examples_dir):
    caches = site_caches(tmp_path / "data", examples_dir)
    out_dir = tmp_path / "out"
    overrides = {
        "num-rounds": 1, "local-epochs": 1, "num-hospitals": 2, "min-fraction": 1.0, "batch-size": 4,
        "model-config": '{"width": 4, "num_experts": 2, "gate_width": 4}', "out-dir": str(out_dir),
        "round-timeout": 600.0,
    }
    dep = LocalDeployment([Site(h, str(p)) for h, p in caches.items()], tmp_path / "deploy", cwd=tmp_path)
    with dep:
        result = dep.run(REPO_ROOT, overrides, timeout=900)
        seen = dep.process_tree()
    logs = "\n".join(f"--- {n}\n{dep.read_log(n)[-2000:]}" for n in ("superlink", "supernode-0", "supernode-1"))
    assert result.ok, f"{result.status} rc={result.returncode}\n{result.log[-4000:]}\n{logs}"
    assert "Saved classifier checkpoint" in result.log

    model_dir = out_dir / "classifier"
    assert (model_dir / "model.safetensors").is_file()
    history = json.loads((model_dir / "history.json").read_text())
    train = sorted(r["hospital"] for r in history["records"] if r["phase"] == "train")
    assert train == [0, 1]
    assert sorted(r["hospital"] for r in history["records"] if r["phase"] == "evaluate") == [0, 1]
    assert history["summary"]["rejected_updates"] == []
    config = read_config(model_dir, "classifier")
    assert config.operating["hospitals"] == [0, 1] and config.training["engine"] == "flower-deployment"
    assert config.training["num-rounds"] == 1 and config.model_args["width"] == 4  # the model's own, via `set`

    # superlink + 2 supernodes + their superexecs (+ the serverapp process): all gone after the `with`
    assert len(seen) >= 6
    assert not [p for p in seen if alive(p)]
    assert not dep.process_tree()


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost (what `openssl` would make)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def make_node_key(path: Path) -> Path:
    """An EC P-384 key pair in OpenSSH format (`ssh-keygen -t ecdsa -b 384 -N "" -f path`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.with_name(path.name + ".pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path


def test_tls_and_node_authentication(tmp_path, examples_dir):
    """HTTPS SuperLink that only admits registered SuperNodes; both hospitals' nodes come online over TLS."""
    import time

    from medfedpure.federated.deployment import TlsFiles

    caches = site_caches(tmp_path / "data", examples_dir)
    tls = TlsFiles(*(str(p) for p in make_tls_files(tmp_path / "certs")))
    keys = {h: make_node_key(tmp_path / "certs" / f"hospital-{h}") for h in caches}
    with pytest.raises(ValueError, match="needs TLS"):
        LocalDeployment([Site(0, str(caches[0]))], tmp_path / "x", node_keys={0: keys[0]})
    dep = LocalDeployment([Site(h, str(p)) for h, p in caches.items()], tmp_path / "deploy", cwd=tmp_path,
                          tls=tls, node_keys=keys)
    with dep:
        config = (dep.flwr_home / "config.toml").read_text()
        assert "root-certificates" in config and "insecure" not in config
        deadline = time.monotonic() + 60
        while len(dep.online_nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        online = dep.online_nodes()
        seen = dep.process_tree()
    assert len(online) == 2, dep.read_log("supernode-0")[-2000:] + dep.read_log("superlink")[-2000:]
    assert "--enable-supernode-auth" in dep.commands()[0] and "--ssl-certfile" in dep.commands()[0]
    assert not [p for p in seen if alive(p)]
