"""Start and stop a local MLServer: the embedded default's server and the tests' server.

The server listens on 127.0.0.1 only, loads nothing at start-up (the control plane decides what
is live), and is stopped by its own process group so no worker outlives it. It serves its own
Prometheus metrics (requests, inference times, loaded models) at ``/metrics`` on a port of its own
(``metrics_port``). Several replicas share one model repository: its ``settings.json`` holds what
they have in common, among it the repository class that finds a model by its path in our layout
(mlserver_repository.py), and each replica's ports come from its environment (MLSERVER_HTTP_PORT,
MLSERVER_GRPC_PORT, MLSERVER_METRICS_PORT).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .client import V2Client
from .processes import LocalProcess, free_port
from .repository import atomic_write_json

# The folder that holds the ``deployments`` package, so MLServer can import our runtime.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
METRICS_ENDPOINT = "/metrics"
# Without --metrics-port, a replica serves its metrics on its HTTP port + this (8090 -> 8190).
METRICS_PORT_OFFSET = 100
# The repository class the replicas run: finds a served name by its path in our layout, no scan of the root.
LAYOUT_REPOSITORY = "deployments.inference.mlserver_repository.LayoutModelRepository"


class LocalMLServer(LocalProcess):
    """One MLServer process serving ``repository_root``; ``workdir`` holds its log."""

    name = "MLServer"

    def __init__(
        self,
        repository_root: Path | str,
        workdir: Path | str,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        parallel_workers: int = 0,
        extra_env: dict[str, str] | None = None,
        repository_implementation: str | None = LAYOUT_REPOSITORY,
    ):
        self.repository_root = Path(repository_root).resolve()
        self.workdir = Path(workdir).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.parallel_workers = parallel_workers
        self.extra_env = extra_env or {}
        # None: MLServer's own repository class, which globs the whole root on every load (benchmarks compare).
        self.repository_implementation = repository_implementation
        super().__init__(self.workdir / "mlserver.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The replica's own Prometheus metrics (MLServer's, not the control plane's)."""
        return f"http://127.0.0.1:{self.metrics_port}{METRICS_ENDPOINT}"

    def write_settings(self) -> Path:
        """Write the replicas' shared settings.json into the repository root.

        ``mlserver start FOLDER`` always takes FOLDER as its model repository and reads
        FOLDER/settings.json, so that is where the server settings must live. Ports are not in it:
        values missing from the file come from the environment (see ``start``).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repository_root.mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "model_repository_root": str(self.repository_root),
            "load_models_at_startup": False,
            "metrics_endpoint": METRICS_ENDPOINT,
            "parallel_workers": self.parallel_workers,
            "debug": False,
        }
        if self.repository_implementation is not None:
            settings["model_repository_implementation"] = self.repository_implementation
        path = self.repository_root / "settings.json"
        atomic_write_json(path, settings)
        return path

    def start(self, timeout: float = 120.0) -> LocalMLServer:
        if self.running:
            return self
        self.write_settings()
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "MLSERVER_HTTP_PORT": str(self.http_port),
                # gRPC always binds its port: give it a free one rather than collide on 8081.
                "MLSERVER_GRPC_PORT": str(self.grpc_port),
                # Its metrics server binds a port of its own too (MLServer's default, 8082, would collide).
                "MLSERVER_METRICS_PORT": str(self.metrics_port),
                # Where parallel inference workers would share metrics: one folder per replica.
                "MLSERVER_METRICS_DIR": str(self.workdir / "metrics"),
            }
        )
        # The control plane's own metrics folder is not MLServer's: its files would be merged into the
        # control plane's /metrics.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.extra_env)
        mlserver_bin = Path(sys.executable).with_name("mlserver")
        self.spawn([str(mlserver_bin), "start", str(self.repository_root)], cwd=self.workdir, env=env)
        with V2Client(self.url, timeout=2.0) as client:
            self.wait_until(client.server_ready, timeout, interval=0.2)
        return self
