"""Run the Flower app on the deployment engine: one SuperLink, one SuperNode per hospital, `flwr run`.

On one machine everything listens on 127.0.0.1 and talks without TLS::

    from medfedpure.federated.deployment import LocalDeployment, Site

    sites = [Site(hospital=0, data_path="site0.npz"), Site(hospital=1, data_path="site1.npz")]
    with LocalDeployment(sites, workdir="deploy") as dep:
        result = dep.run(".", {"num-hospitals": 2, "num-rounds": 1, "out-dir": "runs/deployed"})
    assert result.ok, result.log

`LocalDeployment` starts `flower-superlink` and one `flower-supernode` per site (each started with
`--node-config "hospital=H data-path=PATH"`, so it only ever reads its own cache), writes the SuperLink
connection to `$FLWR_HOME/config.toml` and submits the app with `flwr run <app> <connection> --stream`.
Leaving the `with` block (or an exception, or `stop()`) ends every process it started, including the ones
Flower spawns itself (the SuperExecs, which the SuperLink detaches into a session of their own, and the
ServerApp / ClientApp processes they launch).

With `tls=TlsFiles(ca, cert, key)` the SuperLink serves HTTPS and every party checks it against the CA; with
`node_keys={hospital: private_key}` as well, the SuperLink only admits SuperNodes whose public keys were
registered (`flwr supernode register`). `commands()` lists the equivalent shell commands; docs/DEPLOYMENT.md
shows how to run the same pieces on separate hospital machines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
CONNECTION = "local-deployment"
_RUN_ID = re.compile(r"Successfully started run (\d+)")


class DeploymentError(RuntimeError):
    """A Flower process could not be started, or a run could not be submitted."""


@dataclass(frozen=True)
class Site:
    """One hospital's SuperNode: its hospital id and its own preprocessed cache (`medfedpure data cache`)."""

    hospital: int
    data_path: str
    extra_config: Mapping[str, object] = field(default_factory=dict)

    def node_config(self) -> str:
        """The `--node-config` value, e.g. `hospital=3 data-path='/data/site3.npz'`."""
        items = {"hospital": int(self.hospital), "data-path": str(self.data_path), **dict(self.extra_config)}
        return " ".join(f"{k}={_inline_value(v)}" for k, v in items.items())


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files: the CA certificate every party trusts, the server certificate (its SANs must
    name the address SuperNodes dial and 127.0.0.1, which the SuperLink's own SuperExec dials) and its key."""

    ca_cert: str
    server_cert: str
    server_key: str


def superlink_command(host: str, port: int, tls: TlsFiles | None = None, supernode_auth: bool = False,
                      exe: str = "flower-superlink") -> list[str]:
    """`flower-superlink`: one HTTP(S) port serves the Fleet (SuperNodes), Control (`flwr`) and runtime APIs."""
    cmd = [exe]
    cmd += (["--ssl-ca-certfile", tls.ca_cert, "--ssl-certfile", tls.server_cert, "--ssl-keyfile", tls.server_key]
            if tls else ["--insecure"])
    if supernode_auth:
        cmd.append("--enable-supernode-auth")  # only SuperNodes registered with `flwr supernode register`
    return cmd + ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]


def supernode_command(superlink: str, site: Site, port: int, root_certificates: str | None = None,
                      auth_private_key: str | None = None, host: str = "127.0.0.1",
                      exe: str = "flower-supernode") -> list[str]:
    """`flower-supernode` for one hospital; `port` is its local ClientApp runtime API (bound to `host`)."""
    cmd = [exe] + (["--root-certificates", root_certificates] if root_certificates else ["--insecure"])
    cmd += ["--superlink", superlink]
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    return cmd + ["--host", host, "--port", str(port), "--node-config", site.node_config()]


def public_key_file(private_key: str | Path, out_dir: Path) -> Path:
    """The OpenSSH public key beside `private_key` (`ssh-keygen` writes KEY.pub), or derived from it."""
    private_key = Path(private_key)
    pub = private_key.with_name(private_key.name + ".pub")
    if pub.exists():
        return pub
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_key.read_bytes(), None)
    pub = out_dir / (private_key.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return pub


@dataclass
class RunResult:
    run_id: int | None
    status: str  # e.g. "finished:completed", "finished:failed"; "" if unknown
    returncode: int
    log: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"


# ---------------------------------------------------------------------------------------------------------
# values for --node-config / --run-config


def _inline_value(value: object) -> str:
    """A TOML value as `flwr` parses it from `key=value` pairs (strings become literal '...' strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    text = str(value)
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    if '"' not in text and "\\" not in text and "\n" not in text:
        return f'"{text}"'
    raise ValueError(f"cannot pass {text!r} on the command line (it holds both ' and \"); use a TOML file")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, (dict, list)):
        value = json.dumps(value)  # dict-valued settings (model-config) travel as JSON strings
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def app_run_config(overrides: Mapping[str, object]) -> dict[str, object]:
    """Settings as the app's run config takes them: the model and the shared settings as keys of their own, the
    model's own settings (lr, num-rounds, model-config, ...) in `set`, as one JSON object."""
    from medfedpure.federated.settings import COMMON

    top = {k: v for k, v in overrides.items() if k in COMMON or k in ("model", "set")}
    own = {k: v for k, v in overrides.items() if k not in top}
    if own and "set" in top:
        raise ValueError(f"give the model's settings either in `set` or as keys ({sorted(own)}), not both")
    return {**top, **({"set": json.dumps(own)} if own else {})}


def write_run_config(overrides: Mapping[str, object], path: Path) -> Path:
    """Write `--run-config` overrides as a TOML file (any string survives, unlike `k=v` pairs)."""
    config = app_run_config(overrides)
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items()), encoding="utf-8")
    return path


def write_connection(flwr_home: Path, address: str, name: str = CONNECTION,
                     root_certificates: str | None = None) -> Path:
    """Write `$FLWR_HOME/config.toml` with one SuperLink connection (insecure unless a CA file is given)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f"default = {json.dumps(name)}", "", f"[superlink.{name}]",
             f"address = {json.dumps(address)}"]
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    else:
        lines.append("insecure = true")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# process bookkeeping (Linux reads /proc; elsewhere only the process groups we created are signalled)


def _proc_table() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, pgid, state, start time) of every process, from /proc; {} where /proc is not available."""
    table = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ... starttime
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], int(fields[19]))
    return table


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    table = _proc_table()
    if table:
        return pid in table and table[pid][2] != "Z"
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _tree(roots: Mapping[int, int], table: dict[int, tuple[int, int, str, int]]) -> dict[int, int]:
    """Live `roots` ({pid: start time}, so a reused pid is never mistaken for ours), their descendants and
    every member of their process groups -> {pid: start time}."""
    found = {p for p, start in roots.items() if p in table and table[p][3] == start}
    groups = {table[p][1] for p in found} - {0, 1}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, pgid, _state, _start) in table.items():
            if pid not in found and (ppid in found or pgid in groups):
                found.add(pid)
                changed = True
                if pgid not in (0, 1):
                    groups.add(pgid)
    return {p: table[p][3] for p in found if table[p][2] != "Z"}


# ---------------------------------------------------------------------------------------------------------


class LocalDeployment:
    """SuperLink + one SuperNode per site, all on `host` with free ports; a context manager.

    `workdir` holds each process's FLWR_HOME and log (`logs/superlink.log`, `logs/supernode-H.log`); the
    SuperLink runs in `cwd` (default: the current directory), which is where a relative `out-dir` lands.
    """

    def __init__(self, sites: Sequence[Site], workdir: str | Path | None = None, *, host: str = "127.0.0.1",
                 cwd: str | Path | None = None, env: Mapping[str, str] | None = None, connection: str = CONNECTION,
                 client_threads: int = 1, tls: TlsFiles | None = None,
                 node_keys: Mapping[int, str | Path] | None = None):
        if not sites:
            raise ValueError("a deployment needs at least one site")
        hospitals = [s.hospital for s in sites]
        if len(set(hospitals)) != len(hospitals):
            raise ValueError(f"each site needs its own hospital id, got {hospitals}")
        if node_keys is not None:
            if tls is None:
                raise ValueError("SuperNode authentication needs TLS (pass tls=TlsFiles(...))")
            missing = sorted(set(hospitals) - set(node_keys))
            if missing:
                raise ValueError(f"no private key for hospital(s) {missing}")
        # The ClientApp processes run elsewhere (the SuperNode's cwd): pass absolute cache paths.
        self.sites = [replace(s, data_path=str(Path(s.data_path).resolve())) for s in sites]
        self.host = host
        self.tls = TlsFiles(*(str(Path(f).resolve()) for f in (tls.ca_cert, tls.server_cert, tls.server_key))) \
            if tls else None
        self.node_keys = {int(h): str(Path(k).resolve()) for h, k in (node_keys or {}).items()}
        self.connection = connection
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medfedpure-deploy-")).resolve()
        self.cwd = Path(cwd or os.getcwd()).resolve()
        self.flwr_home = self.workdir / "flwr-home"  # the CLI's: holds config.toml
        self.log_dir = self.workdir / "logs"
        self.port: int | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self._seen: dict[int, int] = {}  # pid -> start time of every process seen in our tree
        self._runs = 0
        bin_dir = str(Path(sys.executable).parent)  # flower-superlink, flower-superexec, ... live beside python
        base = {**os.environ, **QUIET_ENV, **dict(env or {})}
        base["PATH"] = bin_dir + os.pathsep + base.get("PATH", "")
        # One thread per ClientApp by default: several hospitals share this machine's cores.
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            base.setdefault(key, str(client_threads))
        self.env = base
        self.bin_dir = bin_dir

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self.port is None:
            raise DeploymentError("the deployment is not started")
        return f"{self.host}:{self.port}"

    def _exe(self, name: str) -> str:
        path = Path(self.bin_dir) / name
        return str(path) if path.exists() else (shutil.which(name, path=self.env["PATH"]) or name)

    def _spawn(self, name: str, cmd: list[str], flwr_home: Path) -> subprocess.Popen:
        flwr_home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        proc = subprocess.Popen(cmd, cwd=self.cwd, env={**self.env, "FLWR_HOME": str(flwr_home)}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes[name] = proc
        self._remember(proc.pid)
        return proc

    def commands(self) -> list[str]:
        """The shell commands this deployment runs (for the docs and for debugging)."""
        port = self.port or 9091
        address = f"{self.host}:{port}"
        ca = self.tls.ca_cert if self.tls else None
        out = [superlink_command(self.host, port, self.tls, bool(self.node_keys))]
        for h, key in self.node_keys.items():
            out.append(["flwr", "supernode", "register", f"{key}.pub", self.connection, "--name", f"hospital-{h}"])
        for site in self.sites:
            out.append(supernode_command(address, site, 0, ca, self.node_keys.get(site.hospital), self.host))
        out.append(["flwr", "run", ".", self.connection, "--stream", "--run-config", "overrides.toml"])
        return [subprocess.list2cmdline(c).replace("--port 0 ", "--port <free port> ") for c in out]

    def start(self, timeout: float = 60.0) -> None:
        if self.processes:
            raise DeploymentError("already started")
        self.port = free_port(self.host)
        superlink = self._spawn("superlink", superlink_command(self.host, self.port, self.tls, bool(self.node_keys),
                                                               exe=self._exe("flower-superlink")),
                                self.workdir / "superlink" / "flwr-home")
        deadline = time.monotonic() + timeout
        while not _port_open(self.host, self.port):
            if superlink.poll() is not None:
                raise DeploymentError(f"flower-superlink exited with {superlink.returncode}; see "
                                      f"{self.log_dir / 'superlink.log'}:\n{self.read_log('superlink')[-3000:]}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"flower-superlink did not open {self.address} within {timeout:.0f} s")
            time.sleep(0.2)
        ca = self.tls.ca_cert if self.tls else None
        write_connection(self.flwr_home, self.address, self.connection, root_certificates=ca)
        for hospital, key in self.node_keys.items():
            pub = public_key_file(key, self.workdir)
            res = self.flwr("supernode", "register", str(pub), self.connection, "--name", f"hospital-{hospital}")
            if res.returncode != 0:
                raise DeploymentError(f"could not register hospital {hospital}'s key:\n{res.stdout}{res.stderr}")
        for site in self.sites:
            cmd = supernode_command(self.address, site, free_port(self.host), ca, self.node_keys.get(site.hospital),
                                    self.host, exe=self._exe("flower-supernode"))
            self._spawn(f"supernode-{site.hospital}", cmd, self.workdir / f"supernode-{site.hospital}" / "flwr-home")
        time.sleep(0.5)
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise DeploymentError(f"{name} exited with {proc.returncode}:\n{self.read_log(name)[-3000:]}")

    def online_nodes(self) -> list[dict]:
        """SuperNodes the SuperLink lists as online (with node authentication: registered ones only)."""
        res = self.flwr("supernode", "ls", self.connection, "--format", "json")
        try:
            nodes = json.loads(res.stdout[res.stdout.find("{"):])["nodes"]
        except (ValueError, KeyError):
            return []
        return [n for n in nodes if n.get("status") == "online"]

    def read_log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _remember(self, pid: int) -> None:
        entry = _proc_table().get(pid)
        self._seen[pid] = entry[3] if entry else -1

    def process_tree(self) -> set[int]:
        """Every live process this deployment started, directly or through Flower (SuperExec, app processes)."""
        table = _proc_table()
        if not table:  # no /proc: only the processes we spawned ourselves are known
            return {p.pid for p in self.processes.values() if p.poll() is None}
        found = _tree(self._seen, table)
        self._seen.update(found)
        return set(found)

    def stop(self, grace: float = 10.0) -> set[int]:
        """End every process this deployment started (SIGTERM, then SIGKILL after `grace` s); returns their pids.

        The whole tree is listed before anything is signalled: SuperExec runs in its own session, and once
        the SuperLink is gone nothing links it to us any more.
        """
        ended: set[int] = set()
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
                pids = self.process_tree()
                if not pids:
                    break
                ended |= pids
                table = _proc_table()
                groups = {table[p][1] for p in pids if p in table} - {0, 1, os.getpgrp()}
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
                for pgid in groups:
                    try:
                        os.killpg(pgid, sig)
                    except OSError:
                        pass
                deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
                while time.monotonic() < deadline:
                    for proc in self.processes.values():
                        proc.poll()  # reap our direct children
                    if not self.process_tree():
                        break
                    time.sleep(0.1)
            for proc in self.processes.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for log in self._logs:
                log.close()
            self._logs.clear()
        return ended

    # -- runs -----------------------------------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a `flwr` CLI command against this deployment's SuperLink connection."""
        env = {**self.env, "FLWR_HOME": str(self.flwr_home), "NO_COLOR": "1", "COLUMNS": "200"}
        return subprocess.run([self._exe("flwr"), *args], cwd=self.cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def run_status(self, run_id: int) -> str:
        res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(res.stdout[res.stdout.find("{"):])["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError):
            return ""

    def run(self, app: str | Path = ".", run_config: Mapping[str, object] | None = None,
            timeout: float = 1800.0) -> RunResult:
        """`flwr run <app> <connection> --stream [--run-config overrides.toml]`; waits for the run to end.

        `run_config`: any run settings; the model's own travel in the run config's `set` (`app_run_config`),
        dict values (model-config) as JSON. A relative `out-dir` is relative to `cwd`.
        """
        self._runs += 1
        cmd = [self._exe("flwr"), "run", str(Path(app).resolve()), self.connection, "--stream"]
        if run_config:
            cmd += ["--run-config", str(write_run_config(run_config, self.workdir / f"run-{self._runs}.toml"))]
        env = {**self.env, "FLWR_HOME": str(self.flwr_home), "NO_COLOR": "1", "COLUMNS": "200"}
        log_path = self.log_dir / f"flwr-run-{self._runs}.log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self._remember(proc.pid)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                returncode = -9
        text = log_path.read_text(errors="replace")
        match = _RUN_ID.search(text)
        run_id = int(match.group(1)) if match else None
        if returncode == -9 and run_id is not None:
            self.flwr("stop", str(run_id), self.connection)  # do not leave the run going on the SuperLink
        status = self.run_status(run_id) if run_id is not None else ""
        deadline = time.monotonic() + 30
        while run_id is not None and not status.startswith("finished") and time.monotonic() < deadline:
            time.sleep(0.5)  # the log stream can end a moment before the status changes
            status = self.run_status(run_id)
        return RunResult(run_id, status, returncode, text, round(time.monotonic() - started, 1))
