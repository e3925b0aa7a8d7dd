"""Run a federated job on Flower's simulation engine (one machine, one virtual SuperNode per hospital)."""

from __future__ import annotations

import os

from medfedpure.federated import settings as run_settings


def quiet_flower_env() -> None:
    """No telemetry, update checks or usage stats: this runs offline, on hospital machines."""
    for key, value in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                       "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                       # Ray runs its workers at niceness 15, which starves training behind any other job.
                       "RAY_worker_niceness": "0"}.items():
        os.environ.setdefault(key, value)


def simulate(kind: str, overrides: dict | None = None, cpus: int | None = None, gpus: float = 0.0) -> dict:
    quiet_flower_env()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from medfedpure.federated.client_app import app as client_app
    from medfedpure.federated.server_app import run_training

    settings = run_settings.resolve(kind, overrides)
    cpus = cpus or os.cpu_count() or 1
    # Each virtual hospital gets `client-threads` cores, so ceil(cpus / threads) hospitals train at once.
    threads = max(1, min(int(settings["client-threads"]), cpus))
    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome.update(run_training(grid, {**settings, "engine": "flower-simulation"}))

    backend = {"client_resources": {"num_cpus": threads, "num_gpus": gpus},
               "init_args": {"num_cpus": cpus, "num_gpus": 1 if gpus else 0, "include_dashboard": False}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=int(settings["num-hospitals"]),
                   backend_config=backend)
    if not outcome:
        raise RuntimeError("the federated run did not finish; see the Flower log above")
    return outcome
