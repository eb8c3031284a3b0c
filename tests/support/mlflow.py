"""A real MLflow tracking server for the models:/ and runs:/ sources' tests and benchmark.

The full ``mlflow`` package (requirements-mlflow.txt): a SQLite backend store, and artifacts that the
server itself stores and serves (``--artifacts-destination``), so a client downloads them over HTTP
as it would from a remote server, never from a path it happens to share.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Self

import httpx

from deployments.inference.processes import LocalProcess, free_port


class LocalMlflowServer(LocalProcess):
    name = "mlflow server"

    def __init__(self, workdir: Path, port: int | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / "mlflow-server.log")
        self.workdir = workdir
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Self:
        if self.running:
            return self
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
        if mlflow is None:
            raise RuntimeError("the mlflow server is not installed: pip install -r requirements-mlflow.txt")
        command = [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.workdir / "artifacts"),
        ]
        env = {
            **os.environ,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            # A registry that stores artifact locations on other hosts, as one whose operator allows them
            # (or an older server) does: what our client must refuse to follow is then in the registry.
            "MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES": "http,https,mlflow-artifacts",
        }
        self.spawn(command, cwd=self.workdir, env=env)
        self.wait_until(self._healthy, timeout=timeout, interval=0.5)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def log_model_folder(tracking_uri: str, folder: Path, artifact_path: str = "model") -> str:
    """Log ``folder`` as a run's artifacts under ``artifact_path``, as a training pipeline would; the run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id="0")
    client.log_artifacts(run.info.run_id, str(folder), artifact_path=artifact_path)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_with_artifacts_at(tracking_uri: str, location: str) -> str:
    """A run of a new experiment whose artifact location is ``location`` (another host, a path of this
    machine), as anyone who may write to the registry can make one; the run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"elsewhere-{uuid.uuid4().hex}", artifact_location=location)
    run = client.create_run(experiment_id=experiment)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def register_version(tracking_uri: str, name: str, run_id: str, artifact_path: str = "model") -> str:
    """Register the run's artifacts as a new version of ``name`` (created if new); the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id)
    return str(version.version)


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(name, alias, version)


NAME = "minilm-embedder"


def seed_registry(tracking_uri: str, minilm_dir: Path, workdir: Path) -> dict[str, str]:
    """MiniLM as version 1 of NAME and, with a release note more, version 2; the alias champion on version 1."""
    second = workdir / "v2" / "model"
    shutil.copytree(minilm_dir, second)
    (second / "RELEASE_NOTES.txt").write_text("v2")
    run1, run2 = log_model_folder(tracking_uri, minilm_dir), log_model_folder(tracking_uri, second)
    assert (register_version(tracking_uri, NAME, run1), register_version(tracking_uri, NAME, run2)) == ("1", "2")
    set_alias(tracking_uri, NAME, "champion", "1")
    return {"uri": tracking_uri, "run1": run1, "run2": run2}
