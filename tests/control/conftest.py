"""Fixtures of the control plane's tests: users and clients, the session MLServer as the
configured server, and real qcluster worker subprocesses on the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from deployments.inference.packaged import packaged_model_root
from deployments.inference.server import LocalMLServer
from deployments.models import Task
from tests.control.factories import EmbeddingModelFactory, UserFactory

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WRITE_PERMISSIONS = [
    "add_deploymenttask",
    "change_deploymenttask",
    "add_deletiontask",
    "change_deletiontask",
    "add_embeddingmodel",
    "change_embeddingmodel",
    "delete_embeddingmodel",
]


@pytest.fixture
def operator(db):
    user = UserFactory(username="operator")
    user.user_permissions.add(*Permission.objects.filter(codename__in=WRITE_PERMISSIONS))
    return user


@pytest.fixture
def api(operator) -> APIClient:
    """A client authenticated with the operator's token, as scripts do."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
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
def inference_settings(settings, mlserver: LocalMLServer, sources_root: Path):
    """Point the control plane at the session's real MLServer and its model repository."""
    settings.INFERENCE_SERVER_URL = mlserver.url
    settings.MODEL_REPOSITORY_ROOT = mlserver.repository_root
    settings.ALLOWED_SOURCE_ROOTS = [packaged_model_root(), sources_root]
    settings.INFERENCE_READY_TIMEOUT = 120
    settings.INFERENCE_DEPLOYER_FACTORY = "deployments.services.deployer.build_green_deployer"
    return settings


def database_url() -> str:
    """The test database, as a DATABASE_URL a subprocess can open."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    auth = params["USER"] + (f":{params['PASSWORD']}" if params.get("PASSWORD") else "")
    return f"postgres://{auth}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}/{params['NAME']}"


def worker_env(**overrides: str) -> dict[str, str]:
    """Environment of a worker subprocess: the test database and this test's settings."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url(),
            "SECRET_KEY": settings.SECRET_KEY,  # django-q2 signs queue messages with it
            "INFERENCE_SERVER_URL": settings.INFERENCE_SERVER_URL,
            "MODEL_REPOSITORY_ROOT": str(settings.MODEL_REPOSITORY_ROOT),
            "ALLOWED_SOURCE_ROOTS": ",".join(str(p) for p in settings.ALLOWED_SOURCE_ROOTS),
            "INFERENCE_READY_TIMEOUT": str(settings.INFERENCE_READY_TIMEOUT),
            "INFERENCE_DEPLOYER_FACTORY": settings.INFERENCE_DEPLOYER_FACTORY,
            "TASK_LEASE_SECONDS": str(settings.TASK_LEASE_SECONDS),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    env.update(overrides)
    return env


class QCluster:
    """``manage.py qcluster`` in its own process group, so it can be killed with all its workers."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> QCluster:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL every process of the cluster: a worker that dies without a word."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def qcluster(tmp_path: Path) -> Iterator[Callable[..., QCluster]]:
    """Start real qcluster subprocesses on the test database; all are stopped at the end."""
    started: list[QCluster] = []

    def start(**env_overrides: str) -> QCluster:
        cluster = QCluster(tmp_path / f"qcluster-{len(started)}.log", worker_env(**env_overrides)).start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, on_timeout: Callable[[], str] = str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")


def wait_for_status(task: Task, statuses: set[str], timeout: float, cluster: QCluster | None = None) -> Task:
    def reached() -> bool:
        task.refresh_from_db()
        return task.status in statuses

    wait_for(
        reached,
        timeout,
        f"task {task.pk} to reach {statuses} (is {task.status})",
        (lambda: cluster.log_tail()) if cluster else str,
    )
    return task
