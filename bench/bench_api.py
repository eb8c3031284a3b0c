"""Benchmark of the control plane's API and task hand-off. Not part of the test suite.

    .venv/bin/python bench/bench_api.py [--redis-url redis://127.0.0.1:6379/0] [--database-url URL]
                                        [--clients 64] [--workers 2] [--threads 4]

Everything runs against a throw-away database (SQLite in a temporary folder unless --database-url
names an empty PostgreSQL database) and the web server `make run` starts (gunicorn with
controlplane/gunicorn.conf.py, access log included), and prints, measured side by side in one run:

1. status lookups per second at --clients concurrent clients: GET /deploy/{task_id} (token auth,
   one indexed query for the token, one for the task) against GET /healthz (constant JSON, no
   database) in the same server, their ratio (target >= 0.5) and each one's p50 and p99 latency;
2. p99 latency of /deploy-status with 1,000 and then 100,000 task rows, and the ratio (target <= 1.2);
3. time from POST /deploy to the task being `processing` in a real qcluster worker (p50, p99), on the
   ORM broker and, when Redis answers, on the Redis broker (targets: p50 < 300 ms ORM, < 50 ms Redis).

The workers' deployer points at an address where no inference server listens, so each task fails
fast at `validate` right after it starts: the hand-off latency is what is measured, not a deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATUS_MODELS = 20  # task rows are spread over this many models; lookups pick one at random
SERVERS: dict[str, subprocess.Popen] = {}  # the running web servers by URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(workdir: Path, database_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_VAR_DIR": str(workdir),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            "INFERENCE_SERVER_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: validate fails fast
            "MAX_DEPLOYED_MODELS": "100000",
            "PYTHONPATH": str(PROJECT_ROOT),
            "LOG_LEVEL": "WARNING",
        }
    )
    env.pop("REDIS_URL", None)
    return env


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT_ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def web_server(env: dict[str, str], workdir: Path) -> Iterator[str]:
    """gunicorn as `make run` starts it, on a free port; its access log goes to workdir/web.log."""
    port = free_port()
    server_env = {**env, "WEB_ADDR": f"127.0.0.1:{port}"}
    command = [sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py", "--log-level", "warning"]
    with process(command, server_env, workdir / "web.log") as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the master listens before its workers can answer: wait for an answer
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start; see {workdir}/web.log")
            time.sleep(0.1)
        SERVERS[url] = proc
        try:
            yield url
        finally:
            del SERVERS[url]


def server_cpu_seconds(url: str) -> float:
    """CPU time the gunicorn serving ``url`` has used so far: its master and its workers."""
    master = psutil.Process(SERVERS[url].pid)
    return sum(sum(proc.cpu_times()[:2]) for proc in [master, *master.children(recursive=True)])


# -- 1. throughput, side by side ------------------------------------------------------------


async def _hammer(
    url: str, paths: list[str], headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    """``concurrency`` clients, each sending its next request as soon as the last one is answered, for
    ``seconds``: (requests answered per second, every request's latency)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            async with session.get(url + random.choice(paths), headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - started), latencies


def throughput(
    url: str, headers: dict[str, str], status_paths: list[str], seconds: float, clients: int
) -> dict[str, tuple[float, list[float], float]]:
    """Alternate the two endpoints over three rounds: each one's median rate, all its latencies, and
    the server's CPU time per request (which the other processes on the machine do not inflate much)."""
    endpoints = {"status": status_paths, "constant": ["/healthz"]}
    rates: dict[str, list[float]] = {name: [] for name in endpoints}
    latencies: dict[str, list[float]] = {name: [] for name in endpoints}
    cpu: dict[str, float] = dict.fromkeys(endpoints, 0.0)
    for paths in endpoints.values():  # warm up every worker and thread, and the connections
        asyncio.run(_hammer(url, paths, headers, 1.0, clients))
    for _ in range(3):
        for name, paths in endpoints.items():
            cpu_before = server_cpu_seconds(url)
            rate, samples = asyncio.run(_hammer(url, paths, headers, seconds, clients))
            cpu[name] += server_cpu_seconds(url) - cpu_before
            rates[name].append(rate)
            latencies[name] += samples
    return {
        name: (statistics.median(rates[name]), latencies[name], cpu[name] / len(latencies[name])) for name in endpoints
    }


# -- 2. latency against table size ------------------------------------------------------------


async def _latencies(url: str, paths: list[str], headers: dict[str, str], count: int) -> list[float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url + random.choice(paths), headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            samples.append(time.perf_counter() - started)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def seed_tasks(total: int) -> None:
    """Grow the deployment-task table to ``total`` rows, spread over STATUS_MODELS models."""
    from django.db import transaction

    from deployments.models import DeploymentTask, ModelLease, TaskStatus

    have = DeploymentTask.objects.count()
    batch: list[DeploymentTask] = []
    leases = {lease.pk: lease for lease in ModelLease.objects.filter(pk__startswith="bench-status-")}
    statuses = [TaskStatus.DONE] * 8 + [TaskStatus.FAILED, TaskStatus.REFUSED]
    with transaction.atomic():
        for i in range(have, total):
            model_id = f"bench-status-{i % STATUS_MODELS}"
            lease = leases.setdefault(model_id, ModelLease(embedding_model_id=model_id))
            lease.next_sequence += 1
            batch.append(
                DeploymentTask(
                    embedding_model_id=model_id,
                    status=random.choice(statuses),
                    sequence=lease.next_sequence,
                    detail="seeded",
                    metadata={"attempt": 1, "retry_of": None, "revision": "r" * 12},
                )
            )
            if len(batch) == 5000:
                DeploymentTask.objects.bulk_create(batch)
                batch.clear()
        DeploymentTask.objects.bulk_create(batch)
        for lease in leases.values():
            lease.save()
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE deployments_task")


# -- 3. POST /deploy -> processing ---------------------------------------------------------


def hand_off_latency(env: dict[str, str], workdir: Path, broker: str, headers: dict[str, str], count: int):
    import httpx
    from django.db import close_old_connections

    from deployments.inference.packaged import packaged_model_dir
    from deployments.models import DeploymentTask, EmbeddingModel

    prefix = f"bench-{broker}-"
    source = str(packaged_model_dir())
    EmbeddingModel.objects.bulk_create(
        [EmbeddingModel(id=f"{prefix}{i}", source=source) for i in range(count + 1)], ignore_conflicts=True
    )
    with (
        web_server(env, workdir) as url,
        process([sys.executable, "manage.py", "qcluster"], env, workdir / f"qcluster-{broker}.log"),
        httpx.Client(base_url=url, headers=headers, timeout=10) as client,
    ):
        # Warm up: wait until the cluster runs a first task.
        warm = client.post("/deploy", json={"embedding_model_id": f"{prefix}{count}"}).json()["task_id"]
        deadline = time.monotonic() + 60
        while DeploymentTask.objects.get(pk=warm).started_at is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"the {broker} qcluster did not start a task; see {workdir}/qcluster-{broker}.log")
            time.sleep(0.05)
            close_old_connections()
        task_ids = []
        for i in range(count):
            task_ids.append(client.post("/deploy", json={"embedding_model_id": f"{prefix}{i}"}).json()["task_id"])
            time.sleep(0.05)  # an operator's pace, not a flood: we measure latency, not a backlog
        deadline = time.monotonic() + 60
        while DeploymentTask.objects.filter(pk__in=task_ids, started_at__isnull=True).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"tasks did not start on the {broker} broker")
            time.sleep(0.1)
    tasks = DeploymentTask.objects.filter(pk__in=task_ids)
    return [(t.started_at - t.created_at).total_seconds() for t in tasks]


def redis_answers(redis_url: str) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(redis_url, socket_timeout=1).ping())
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an EMPTY database to use (default: SQLite in a temporary folder)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput round")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients in the throughput rounds")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (WEB_THREADS)")
    parser.add_argument("--samples", type=int, default=2000, help="latency samples per table size")
    parser.add_argument("--hand-offs", type=int, default=100, help="POST /deploy requests per broker")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = base_env(workdir, args.database_url)
    env.update({"WEB_CONCURRENCY": str(args.workers), "WEB_THREADS": str(args.threads)})
    setup_django(env)
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken

    from deployments.models import DeploymentTask

    user = get_user_model().objects.create_superuser("bench", "bench@localhost", None)
    headers = {"Authorization": f"Token {AuthToken.objects.create(user=user, expiry=None)[1]}"}
    status_paths = [f"/deploy-status/bench-status-{i}" for i in range(STATUS_MODELS)]
    db = "PostgreSQL" if "postgres" in env["DATABASE_URL"] else "SQLite"
    server = f"gunicorn, {args.workers} worker(s) x {args.threads} thread(s)"
    print(f"database: {db}; web server: {server}; workdir {workdir}\n")

    seed_tasks(1_000)
    task_paths = [f"/deploy/{pk}" for pk in DeploymentTask.objects.values_list("pk", flat=True)[:500]]
    with web_server(env, workdir) as url:
        measured = throughput(url, headers, task_paths, args.seconds, args.clients)
        rounds = f"median of 3 alternating rounds of {args.seconds:g} s"
        print(f"1. lookups per second, {args.clients} concurrent clients ({rounds})")
        print("                              req/s      p50         p99    server CPU/request")
        for label, name in (("GET /deploy/{task_id}  ", "status"), ("GET /healthz (constant)", "constant")):
            rate, samples, cpu = measured[name]
            p50, p99 = percentile(samples, 50) * 1000, percentile(samples, 99) * 1000
            print(f"   {label}  {rate:7.0f}  {p50:7.1f} ms  {p99:7.1f} ms  {cpu * 1000:7.2f} ms")
        ratio = measured["status"][0] / measured["constant"][0]
        verdict = "meets" if ratio >= 0.5 else "MISSES"
        print(f"   ratio status/constant    {ratio:7.2f}  ({verdict} the target of >= 0.5)\n")
        small = asyncio.run(_latencies(url, status_paths, headers, args.samples))
    seed_tasks(100_000)
    with web_server(env, workdir) as url:
        asyncio.run(_latencies(url, status_paths, headers, 200))  # warm up the new process
        large = asyncio.run(_latencies(url, status_paths, headers, args.samples))
    print(f"2. GET /deploy-status latency, {args.samples} sequential requests")
    for label, samples in (("1,000 rows  ", small), ("100,000 rows", large)):
        print(f"   {label}  p50 {percentile(samples, 50) * 1000:6.2f} ms  p99 {percentile(samples, 99) * 1000:6.2f} ms")
    ratio = percentile(large, 99) / percentile(small, 99)
    print(f"   p99 ratio 100k/1k  {ratio:.2f}  (target <= 1.2)\n")

    print(f"3. POST /deploy -> processing, {args.hand_offs} tasks per broker (created_at -> started_at)")
    brokers = [("orm", env, 0.300)]
    if redis_answers(args.redis_url):
        brokers.append(("redis", {**env, "REDIS_URL": args.redis_url}, 0.050))
    else:
        print(f"   (Redis at {args.redis_url} does not answer: skipping the Redis broker)")
    for broker, broker_env, target in brokers:
        samples = hand_off_latency(broker_env, workdir, broker, headers, args.hand_offs)
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        verdict = "meets" if p50 < target else "MISSES"
        print(
            f"   {broker:5}  p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"
            f"  ({verdict} the p50 target of {target * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
