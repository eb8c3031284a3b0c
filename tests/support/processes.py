"""Real processes for the tests: qcluster workers (bare or under run_workers) and the web server (gunicorn) on the
test database, and waiting for what they do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import httpx
import psutil
from django.conf import settings
from django.db import connection

from deployments.inference.server import free_port
from deployments.models import Task
from deployments.services.watchdog import kill_process_group, process_group

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
            "INFERENCE_REPLICA_URLS": ",".join(settings.INFERENCE_REPLICA_URLS),
            "ROUTER_ADMIN_URL": settings.ROUTER_ADMIN_URL,
            "ROUTER_CONFIG_DIR": str(settings.ROUTER_CONFIG_DIR),
            "INFERENCE_BAKE_SECONDS": str(settings.INFERENCE_BAKE_SECONDS),
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


class ManagedCommand:
    """A ``manage.py`` command in its own process group, logging to a file."""

    command: tuple[str, ...] = ()

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", *self.command],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL every process of the group: a process that dies without a word."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class QCluster(ManagedCommand):
    """``manage.py qcluster``, so it can be killed with all its workers."""

    command = ("qcluster",)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.kill()


class SupervisedWorkers(ManagedCommand):
    """``manage.py run_workers``: a qcluster (in a process group of its own) under the watchdog."""

    command = ("run_workers",)

    def stop(self) -> None:
        """SIGTERM, as systemd would; whatever is left after the supervisor's own deadline is SIGKILLed."""
        if not self.process:
            return
        groups = self.cluster_groups()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(float(self.env.get("WORKERS_STOP_SECONDS", "10")) + 10)
            except subprocess.TimeoutExpired:
                self.kill()
        for pgid in groups:
            kill_process_group(pgid)

    def cluster_groups(self) -> list[int]:
        """The process groups of the qclusters the supervisor runs now (each qcluster leads its own)."""
        if not self.process or self.process.poll() is not None:
            return []
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def worker_pids(self, cluster_pid: int) -> list[int]:
        """The live django-q2 workers of the qcluster ``cluster_pid``, as its log announces them."""
        announced = {int(pid) for pid in re.findall(r"ready for work at (\d+)", self.log_path.read_text())}
        return sorted(announced & {process.pid for process in process_group(cluster_pid)})


class ReconcileLoop(ManagedCommand):
    """``manage.py reconcile --every 0.5``, as ``make run`` keeps it running (a shorter period, for the tests)."""

    command = ("reconcile", "--every", "0.5")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


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


# What switches the web server to "behind a TLS proxy" (settings.py); a test's server starts without them.
# Everything README's "behind a proxy" section asks for, switched on, for a proxy serving https://cp.example.com.
PROXY_ENV = {
    "TRUST_X_FORWARDED_PROTO": "true",
    "CSRF_TRUSTED_ORIGINS": "https://cp.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
}


class WebServer:
    """gunicorn as ``make run`` starts it (controlplane/gunicorn.conf.py) on a free port, on the test
    database, with its own var folder; access log and error log kept apart."""

    def __init__(self, workdir: Path, **env_overrides: str):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {name: value for name, value in worker_env().items() if name not in PROXY_ENV}
        self.env.update({"CONTROLPLANE_VAR_DIR": str(workdir), "WEB_ADDR": f"127.0.0.1:{self.port}"})
        self.env.update(env_overrides)
        self.stdout_path, self.stderr_path = workdir / "stdout.log", workdir / "stderr.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        wait_for(self._answers, timeout, f"gunicorn on {self.url}", lambda: self.stderr_path.read_text())
        return self

    def _answers(self) -> bool:
        assert self.process and self.process.poll() is None, self.stderr_path.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
