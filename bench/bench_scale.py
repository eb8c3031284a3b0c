"""Costs that must stay flat as the number of models grows, measured side by side in one run.

    .venv/bin/python bench/bench_scale.py [--sections load-stall,memory-plan,reconcile,bulk-deploys,admin-at-scale]
        [--loads 10] [--models 1000] [--memory-loaded 100] [--reconcile-models 1000] [--deploys 500]
        [--workers 2] [--registered 10000] [--tasks 1000000] [--requests 20] [--database-url URL]

Sections (each a function returning rows of one table, printed at the end):

  load stall: one real MLServer replica at a time, first on MLServer's default repository class, then
      on ours (LayoutModelRepository), its repository holding 10 models and then --models models (3
      revisions each, laid out as repository.py lays them out; every revision's settings point at one
      tiny model's folder). A client thread calls a steady model A (tiny, loaded) without pause while
      model B is loaded --loads times; the rows give A's p99 latency during B's loads at 10 models and
      at --models models, and their ratio (target for ours <= 1.2), with the load calls' own time.
      The two sizes alternate load by load (the models beyond the first 10 are moved in and out of the
      root between loads), so a drift of the machine's load falls on both alike.

  memory plan: what a deploy's memory check costs (deployments/services/memory.py plan_green: the
      replica's index, the footprints of what it has loaded, the running deploys' reservations, under
      the capacity lock), on a throwaway SQLite database registering --models models with 3 revisions
      each, against one real MLServer replica with 10 and then --memory-loaded tiny models loaded.
      The database's queries per plan (what holds the lock) must not grow with the models loaded or
      registered; the replica's index, read before the lock, is most of a plan's time.
  reconcile: one real replica behind a real Envoy, 10 and then --reconcile-models models deployed (tiny
      models, one fetched revision linked into every model), the registry saying they are live; the
      time of one reconcile cycle in steady state and the HTTP calls it makes, at both sizes.
  bulk deploys: --deploys models registered from one tiny model's folder, deployed in one batch with
      bake_seconds 0 by a real django-q2 cluster (Q_WORKERS=--workers) onto a real replica behind
      Envoy, while two clients read GET /deploy-status/{id} under gunicorn: deploys per minute (the
      first and last tenth too), how many ran at once, each stage's median, the status reads' p99.
  admin at scale: --registered models and --tasks tasks; p99 of the models list, the dashboard, the
      task lists filtered by status and by model, GET /models and GET /deploy-status/{id}.

The sections that need the registry share one throw-away database: SQLite in the run's folder, or
--database-url naming an empty PostgreSQL database. Those that load hundreds of models first measure
what one costs MLServer and load no more than leaves MEMORY_RESERVE of the machine free.

The models are built here (tests/support/tiny_models.py: 1-layer 32-dimension BERT, random weights),
everything lives in a temporary folder, and every server started is stopped at the end. The machine's
load shows in every figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from deployments.inference import Fleet, ModelRepository, V2Client
from deployments.inference.router import HEALTH_CHECK_INTERVAL, LocalEnvoy
from deployments.inference.server import LAYOUT_REPOSITORY, LocalMLServer
from tests.support.routing import Traffic, write_versioned_settings
from tests.support.tiny_models import TINY_DIMENSIONS, build_tiny_model, folder_size

if TYPE_CHECKING:  # it reads the registry: imported once Django is set up
    from tests.support.scale import HttpCalls

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REVISIONS_PER_MODEL = 3
SMALL_REPOSITORY = 10
STALL_TARGET = 1.2
# MLServer's own class (None: the settings name none) and ours.
REPOSITORY_CLASSES = {"MLServer default": None, "ours (layout)": LAYOUT_REPOSITORY}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@dataclass
class Row:
    """One line of the final table: a measured figure, with its target (an upper bound) when it has one."""

    section: str
    label: str
    shown: str
    measured: float | None = None
    target: float | None = None
    target_shown: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.measured is None:
            return "NOT MEASURED"
        return "PASS" if self.measured <= self.target else "FAIL"


# -- load stall ---------------------------------------------------------------------------------


def model_name(n: int) -> str:
    return f"model-{n:04d}"


def revision(n: int, r: int) -> str:
    return f"{r:04x}{n:012x}"


def lay_out_models(root: Path, numbers: range, artifact: Path) -> None:
    """Models as a deploy leaves them (settings per revision, a live pointer), all pointing at ``artifact``."""
    repository = ModelRepository(root)
    for n in numbers:
        for r in range(REVISIONS_PER_MODEL):
            write_versioned_settings(root, model_name(n), revision(n, r), artifact)
        repository.set_live(model_name(n), revision(n, 0))


def move_models(numbers: range, source: Path, target: Path) -> None:
    """Move whole model folders between the root and a parking folder beside it (renames: instant)."""
    for n in numbers:
        os.rename(source / model_name(n), target / model_name(n))


@dataclass
class StallSample:
    load_seconds: list[float]
    during_ms: list[float]  # latencies of A's requests that overlapped a load of B


QUIET_SECONDS = 2.0


def measure_stall(
    server: LocalMLServer, parked: Path, models: int, loads: int
) -> tuple[list[float], dict[int, StallSample]]:
    """A's latency with nothing loading, and while B loads at SMALL_REPOSITORY and at ``models`` models,
    alternating load by load."""
    root = server.repository_root
    steady = f"{model_name(0)}~{revision(0, 0)}"
    # B: the other revisions of the first models, which stay in the root at either size.
    candidates = [f"{model_name(n)}~{revision(n, r)}" for n in range(1, SMALL_REPOSITORY) for r in range(3)]
    extra = range(SMALL_REPOSITORY, models)
    samples = {size: StallSample([], []) for size in (SMALL_REPOSITORY, models)}
    windows: dict[int, list[tuple[float, float]]] = {size: [] for size in samples}
    with V2Client(server.url, timeout=60, load_timeout=300) as client:
        client.load(steady)
        # A second model's first load pays one-off costs (imports, allocator): not a figure of either size.
        client.load(candidates[-1])
        client.unload(candidates[-1])
        with Traffic(server.url, steady, clients=1) as traffic:
            time.sleep(0.5)
            quiet = (time.monotonic(), time.monotonic() + QUIET_SECONDS)
            time.sleep(QUIET_SECONDS)
            for n in range(loads * 2):
                size = (SMALL_REPOSITORY, models)[n % 2]
                if size == models:
                    move_models(extra, parked, root)
                name = candidates[n % len(candidates)]
                time.sleep(0.3)  # A back to its steady pace before the load
                started = time.monotonic()
                client.load(name)
                ended = time.monotonic()
                windows[size].append((started, ended))
                samples[size].load_seconds.append(ended - started)
                time.sleep(0.2)
                client.unload(name)
                if size == models:
                    move_models(extra, root, parked)
            time.sleep(0.3)
        client.unload(steady)
    if traffic.failures:
        raise RuntimeError(f"{len(traffic.failures)} requests to A failed, first: {traffic.failures[0]}")
    for size, spans in windows.items():
        samples[size].during_ms = [
            (answered - sent) * 1000
            for sent, answered, _ in traffic.answers
            if any(sent < end and answered > start for start, end in spans)
        ]
    alone_ms = [(answered - sent) * 1000 for sent, answered, _ in traffic.answers if quiet[0] <= sent < quiet[1]]
    return alone_ms, samples


def section_load_stall(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "load stall"
    artifact = build_tiny_model(workdir / "tiny-model")
    print(f"{section}: tiny model {folder_size(artifact) / 1e6:.1f} MB; {args.loads} loads of B per size", flush=True)
    rows = []
    for label, implementation in REPOSITORY_CLASSES.items():
        base = workdir / label.split()[0].lower()
        root, parked = base / "repository", base / "parked"
        parked.mkdir(parents=True)
        lay_out_models(root, range(SMALL_REPOSITORY), artifact)
        lay_out_models(parked, range(SMALL_REPOSITORY, args.models), artifact)
        server = LocalMLServer(root, base / "server", repository_implementation=implementation)
        started = time.monotonic()
        try:
            server.start()
            alone_ms, samples = measure_stall(server, parked, args.models, args.loads)
        finally:
            server.stop()
        small, large = samples[SMALL_REPOSITORY], samples[args.models]
        p99_small, p99_large = percentile(small.during_ms, 99), percentile(large.during_ms, 99)
        ratio = p99_large / p99_small
        print(f"  {label}: done in {time.monotonic() - started:.0f} s", flush=True)
        rows.append(
            Row(
                section,
                f"{label}: A alone, nothing loading",
                f"p99 {percentile(alone_ms, 99):.1f} ms, median {statistics.median(alone_ms):.1f} ms "
                f"({len(alone_ms)} requests in {QUIET_SECONDS:g} s)",
            )
        )
        for size, sample in samples.items():
            rows.append(
                Row(
                    section,
                    f"{label}, {size:,} models: A during B's load / load call",
                    f"p99 {percentile(sample.during_ms, 99):.1f} ms, max {max(sample.during_ms):.1f} ms "
                    f"({len(sample.during_ms)} requests) / median {statistics.median(sample.load_seconds) * 1000:.0f} "
                    f"ms, max {max(sample.load_seconds) * 1000:.0f} ms",
                )
            )
        rows.append(
            Row(
                section,
                f"{label}: A's p99 at {args.models:,} / at {SMALL_REPOSITORY} models",
                f"{ratio:.2f}x ({p99_large:.1f} / {p99_small:.1f} ms)",
                ratio,
                STALL_TARGET if implementation == LAYOUT_REPOSITORY else None,
                f"<= {STALL_TARGET}x" if implementation == LAYOUT_REPOSITORY else "(shows the problem)",
            )
        )
    return rows


# -- memory plan --------------------------------------------------------------------------------

PLANS_PER_SIZE = 5


def section_memory_plan(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "memory plan"
    workdir.mkdir(parents=True)
    django_ready(args, workdir.parent / "django")  # the run's one throw-away database
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from deployments.inference import Fleet, GreenDeployer, Revision, served_name
    from deployments.inference.router import RouteTable
    from deployments.models import EmbeddingModel, ModelRevision, Task, TaskKind, TaskStatus
    from deployments.services.memory import plan_green

    artifact = build_tiny_model(workdir / "tiny-model")
    root = workdir / "repository"
    lay_out_models(root, range(args.models), artifact)
    EmbeddingModel.objects.bulk_create(
        EmbeddingModel(id=model_name(n), source=str(artifact)) for n in range(args.models + 1)
    )
    ModelRevision.objects.bulk_create(
        ModelRevision(
            name=served_name(model_name(n), revision(n, r)),
            embedding_model_id=model_name(n),
            revision=revision(n, r),
            memory_bytes=4_019_456,
            measured=True,
        )
        for n in range(args.models + 1)
        for r in range(REVISIONS_PER_MODEL)
    )
    green_id = model_name(args.models)  # registered, with revisions on record, never loaded
    green = Revision(green_id, revision(args.models, 0), root / green_id, 1, 0)
    task = Task.objects.create(
        kind=TaskKind.DEPLOYMENT, embedding_model_id=green_id, status=TaskStatus.PROCESSING, sequence=1
    )
    server = LocalMLServer(root, workdir / "server", repository_implementation=LAYOUT_REPOSITORY)
    rows = []
    results: dict[int, tuple[float, int]] = {}
    try:
        server.start()
        fleet = Fleet(server.url, [server.url], RouteTable(workdir / "xds"))
        deployer = GreenDeployer(fleet, ModelRepository(root), allowed_roots=[])
        loaded = 0
        with V2Client(server.url, timeout=120) as client:
            for size in (SMALL_REPOSITORY, args.memory_loaded):
                for n in range(loaded, size):
                    client.load(served_name(model_name(n), revision(n, 0)), timeout=120)
                loaded = size
                times, queries, query_ms = [], [], []
                for _ in range(PLANS_PER_SIZE):
                    with CaptureQueriesContext(connection) as captured:
                        started = time.perf_counter()
                        refusal = plan_green(task.pk, deployer, green, [server.url])
                        times.append((time.perf_counter() - started) * 1000)
                    assert refusal is None, refusal
                    queries.append(len(captured))
                    # The database's part (under the capacity lock); the rest is the replica's index.
                    query_ms.append(sum(float(query["time"]) for query in captured.captured_queries) * 1000)
                results[size] = (statistics.median(query_ms), max(queries))
                rows.append(
                    Row(
                        section,
                        f"{size} loaded, {args.models:,} models registered: one plan",
                        f"median {statistics.median(times):.0f} ms, of which {max(queries)} queries "
                        f"{statistics.median(query_ms):.1f} ms (the rest: the replica's index)",
                    )
                )
        fleet.close()
    finally:
        server.stop()
        # The run's later sections share the database: leave it as found.
        Task.objects.filter(pk=task.pk).delete()
        ModelRevision.objects.all().delete()
        EmbeddingModel.objects.filter(pk__in=[model_name(n) for n in range(args.models + 1)]).delete()
    (small_ms, small_queries), (large_ms, large_queries) = results[SMALL_REPOSITORY], results[args.memory_loaded]
    rows.append(
        Row(
            section,
            f"queries per plan at {args.memory_loaded} / at {SMALL_REPOSITORY} loaded",
            f"{large_queries / small_queries:.2f}x ({large_queries} / {small_queries}); "
            f"their time {large_ms / small_ms:.2f}x",
            large_queries / small_queries,
            1.0,
            "<= 1.0x",
        )
    )
    return rows


# -- Django, for the sections that need the registry --------------------------------------------

_django_database: list[str] = []  # set once: Django is set up once per process


def django_ready(args: argparse.Namespace, workdir: Path) -> None:
    """Django on one throw-away database for the whole run: SQLite in the run's folder, or --database-url."""
    if _django_database:
        return
    from bench.bench_operators import setup_django

    workdir.mkdir(parents=True, exist_ok=True)
    setup_django(workdir, args.database_url)
    from django.conf import settings

    _django_database.append(settings.DATABASES["default"]["NAME"])


def point_at_fleet(server: LocalMLServer, envoy: LocalEnvoy, sources: Path, bake_seconds: float = 0) -> None:
    """The control plane's settings for one replica behind one Envoy, as `make run` configures them."""
    from django.conf import settings

    settings.INFERENCE_SERVER_URL = envoy.url
    settings.INFERENCE_REPLICA_URLS = [server.url]
    settings.ROUTER_CONFIG_DIR = envoy.routes.config_dir
    settings.ROUTER_ADMIN_URL = envoy.admin_url
    settings.MODEL_REPOSITORY_ROOT = server.repository_root
    settings.ALLOWED_SOURCE_ROOTS = [sources]
    settings.INFERENCE_BAKE_SECONDS = bake_seconds


def process_rss(pid: int) -> int:
    """Resident bytes of a process and its children (MLServer's own workers)."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def loaded_model_cost(
    server: LocalMLServer, fleet: Fleet, repository: ModelRepository, ids: list[str], artifact: Path
) -> float:
    """Serve ``ids`` (registered nowhere); return the resident bytes each one after the first added to MLServer
    (the first pays the imports of torch and transformers)."""
    from tests.support.scale import serve_live_models

    serve_live_models(fleet, repository, ids[:1], artifact)
    first = process_rss(server.process.pid)
    serve_live_models(fleet, repository, ids[1:], artifact)
    return (process_rss(server.process.pid) - first) / (len(ids) - 1)


def server_cpu_percent(server: LocalMLServer, seconds: float = 3.0) -> float:
    """MLServer's CPU use over ``seconds`` (100: one core), its workers included."""
    processes = [psutil.Process(server.process.pid)]
    processes += processes[0].children(recursive=True)
    before = sum(sum(p.cpu_times()[:2]) for p in processes)
    time.sleep(seconds)
    return (sum(sum(p.cpu_times()[:2]) for p in processes) - before) / seconds * 100


def models_that_fit(per_model: float, wanted: int, loaded: int) -> int:
    """How many models may be loaded in all, leaving MEMORY_RESERVE free for the machine's other users."""
    spare = psutil.virtual_memory().available - MEMORY_RESERVE
    return max(loaded, min(wanted, loaded + int(spare / max(per_model, 1))))


# -- reconcile ----------------------------------------------------------------------------------

RECONCILE_SMALL = 10
RECONCILE_CYCLES = 5
MEMORY_RESERVE = 6 * 1024**3  # the machine is shared: never take its last 6 GB


def timed_cycles(cycles: int, expected: int) -> tuple[list[float], HttpCalls]:
    """Seconds per reconcile cycle in steady state, and the HTTP calls of the last one."""
    from deployments.services.reconciler import reconcile_models
    from tests.support.scale import counted_http_calls

    seconds: list[float] = []
    for _ in range(cycles):
        with counted_http_calls() as calls:
            started = time.perf_counter()
            report = reconcile_models()
            seconds.append(time.perf_counter() - started)
        if report.changed or len(report.already_served) != expected:
            raise RuntimeError(f"not in steady state: {report}")
    return seconds, calls


def section_reconcile(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "reconcile"
    django_ready(args, workdir.parent / "django")
    from deployments.models import EmbeddingModel
    from deployments.services.deployer import build_fleet
    from tests.support.scale import register_live, remove_models, serve_live_models

    artifact = build_tiny_model(workdir / "sources" / "tiny-model")
    server = LocalMLServer(workdir / "repository", workdir / "server")
    ids = [f"rc-{n:04d}" for n in range(args.reconcile_models)]
    rows = []
    with server, LocalEnvoy(workdir / "envoy") as envoy:
        point_at_fleet(server, envoy, artifact.parent)
        repository = ModelRepository(server.repository_root)
        fleet = build_fleet()
        try:
            per_model = loaded_model_cost(server, fleet, repository, ids[:RECONCILE_SMALL], artifact)
            revision = repository.live_revision(ids[0])
            register_live(ids[:RECONCILE_SMALL], revision, artifact, fleet.base_url)
            large = models_that_fit(per_model, args.reconcile_models, RECONCILE_SMALL)
            print(
                f"{section}: a loaded tiny model costs MLServer {per_model / 1e6:.1f} MB; "
                f"{large:,} of {args.reconcile_models:,} models fit beside a {MEMORY_RESERVE / 1024**3:.0f} GB reserve",
                flush=True,
            )
            idle_cpu = {RECONCILE_SMALL: server_cpu_percent(server)}
            figures = {RECONCILE_SMALL: timed_cycles(RECONCILE_CYCLES, RECONCILE_SMALL)}
            started = time.monotonic()
            serve_live_models(fleet, repository, ids[RECONCILE_SMALL:large], artifact)
            register_live(ids[RECONCILE_SMALL:large], revision, artifact, fleet.base_url)
            print(
                f"  {large:,} models loaded and routed in {time.monotonic() - started:.0f} s "
                f"(MLServer {process_rss(server.process.pid) / 1e9:.2f} GB)",
                flush=True,
            )
            idle_cpu[large] = server_cpu_percent(server)
            figures[large] = timed_cycles(RECONCILE_CYCLES, large)
        finally:
            remove_models(fleet, repository, ids)
            EmbeddingModel.objects.filter(pk__in=ids).delete()
            fleet.close()
    for size, (seconds, calls) in figures.items():
        called = ", ".join(f"{n} x {method} {path}" for (method, path), n in sorted(Counter(calls).items()))
        rows.append(
            Row(
                section,
                f"{size:,} deployed models, in step: one cycle",
                f"median {statistics.median(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms "
                f"({len(seconds)} cycles); calls: {called}, answered in {sum(calls.seconds) * 1000:.0f} ms",
            )
        )
        rows.append(
            Row(
                section,
                f"{size:,} deployed models: MLServer's CPU between cycles",
                f"{idle_cpu[size]:.0f}% of one core (Envoy health-checks each routed revision every "
                f"{HEALTH_CHECK_INTERVAL})",
            )
        )
    small_calls, large_calls = len(figures[RECONCILE_SMALL][1]), len(figures[large][1])
    rows.append(
        Row(
            section,
            f"HTTP calls per cycle at {large:,} / at {RECONCILE_SMALL} models",
            f"{large_calls} / {small_calls}",
            large_calls / small_calls,
            1.0,
            "= 1x",
        )
    )
    return rows


# -- bulk deploys -------------------------------------------------------------------------------

STATUS_READERS = 2
STATUS_READ_PAUSE = 0.05  # each reader's pause between reads: an operator's dashboard, not a flood
FINISHED = ("done", "failed", "refused", "canceled")


class StatusReaders:
    """Threads reading GET /deploy-status/{id} of random models through the web server until stopped."""

    def __init__(self, url: str, token: str, model_ids: list[str]):
        self.url, self.token, self.model_ids = url, token, model_ids
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True) for _ in range(STATUS_READERS)]

    def _read(self) -> None:
        import httpx

        headers = {"Authorization": f"Token {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                response = client.get(f"/deploy-status/{random.choice(self.model_ids)}")
                if response.status_code == 200:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(STATUS_READ_PAUSE)

    def __enter__(self) -> StatusReaders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def worker_env(server: LocalMLServer, envoy: LocalEnvoy, sources: Path, deploys: int, workers: int) -> dict[str, str]:
    """The environment of the web server and the workers: this run's database and fleet, no bake."""
    env = dict(os.environ)  # setup_django put the database, the var folder and the secret key there
    env.update(
        {
            "INFERENCE_SERVER_URL": envoy.url,
            "INFERENCE_REPLICA_URLS": server.url,
            "ROUTER_CONFIG_DIR": str(envoy.routes.config_dir),
            "ROUTER_ADMIN_URL": envoy.admin_url,
            "MODEL_REPOSITORY_ROOT": str(server.repository_root),
            "ALLOWED_SOURCE_ROOTS": str(sources),
            "INFERENCE_BAKE_SECONDS": "0",
            "MAX_DEPLOYED_MODELS": str(deploys + 100),
            "Q_WORKERS": str(workers),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


def wait_for_tasks(task_ids: list[str], timeout: float) -> None:
    from django.db import close_old_connections

    from deployments.models import DeploymentTask

    deadline = time.monotonic() + timeout
    reported = time.monotonic()
    while (left := DeploymentTask.objects.filter(pk__in=task_ids).exclude(status__in=FINISHED).count()) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} of {len(task_ids)} deploys still unfinished after {timeout:.0f} s")
        if time.monotonic() - reported > 30:
            print(f"  {len(task_ids) - left} of {len(task_ids)} deploys finished", flush=True)
            reported = time.monotonic()
        time.sleep(1)
        close_old_connections()


def section_bulk_deploys(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "bulk deploys"
    django_ready(args, workdir.parent / "django")
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken

    from bench.bench_api import process, web_server
    from deployments.models import DeploymentTask, EmbeddingModel, TaskKind
    from deployments.services.bulk import submit_many
    from deployments.services.deployer import build_fleet
    from tests.support.scale import remove_models

    artifact = build_tiny_model(workdir / "sources" / "tiny-model")
    server = LocalMLServer(workdir / "repository", workdir / "server")
    rows = []
    with server, LocalEnvoy(workdir / "envoy") as envoy:
        point_at_fleet(server, envoy, artifact.parent)
        repository = ModelRepository(server.repository_root)
        fleet = build_fleet()
        warm = [f"warm-{n}" for n in range(6)]
        per_model = loaded_model_cost(server, fleet, repository, warm, artifact)
        remove_models(fleet, repository, warm)
        count = models_that_fit(per_model, args.deploys, 0)
        ids = [f"bulk-{n:04d}" for n in range(count)]
        print(
            f"{section}: a loaded tiny model costs MLServer {per_model / 1e6:.1f} MB; {count:,} of {args.deploys:,} "
            f"deploys fit beside a {MEMORY_RESERVE / 1024**3:.0f} GB reserve",
            flush=True,
        )
        EmbeddingModel.objects.bulk_create(EmbeddingModel(id=model_id, source=str(artifact)) for model_id in ids)
        user = get_user_model().objects.create_superuser("bench-bulk", "bench@localhost", None)
        token = AuthToken.objects.create(user=user, expiry=None)[1]
        env = worker_env(server, envoy, artifact.parent, count, args.workers)
        try:
            with (
                web_server(env, workdir) as url,
                process([sys.executable, "manage.py", "qcluster"], env, workdir / "qcluster.log"),
            ):
                submitted = time.monotonic()
                config = {"bake_seconds": 0, "expected_dimensions": TINY_DIMENSIONS}
                tasks = submit_many(TaskKind.DEPLOYMENT, ids, config=config, requested_by="bench")
                task_ids = [str(task.pk) for task in tasks]
                with StatusReaders(url, token, ids) as readers:
                    wait_for_tasks(task_ids, timeout=120 + 20 * count)
                wall = time.monotonic() - submitted
            finished = list(DeploymentTask.objects.filter(pk__in=task_ids))
        finally:
            remove_models(fleet, repository, ids)
            fleet.close()
            DeploymentTask.objects.filter(embedding_model_id__in=ids).delete()
            EmbeddingModel.objects.filter(pk__in=ids).delete()
    done = [task for task in finished if task.status == "done"]
    failed = [task for task in finished if task.status != "done"]
    busy = sum((task.finished_at - task.started_at).total_seconds() for task in finished if task.started_at)
    first_start = min(task.started_at for task in finished if task.started_at)
    last_end = max(task.finished_at for task in finished)
    span = (last_end - first_start).total_seconds()
    stage_medians = (
        {
            stage: statistics.median(task.metadata.get("timings", {}).get(stage, 0.0) for task in done)
            for stage in ("validate", "fetch", "load_green", "smoke_test", "switch", "retire_blue", "done")
        }
        if done
        else {}
    )
    status_ms = [latency * 1000 for latency in readers.latencies]
    ends = sorted(task.finished_at for task in done)
    tenth = max(1, len(ends) // 10)

    def pace(window: list) -> float:
        return (len(window) - 1) / max((window[-1] - window[0]).total_seconds(), 1e-6) * 60

    rows += [
        Row(
            section,
            f"{count} deploys of different models, {args.workers} workers, bake 0 s",
            f"{len(done)} done, {len(failed)} not ({failed[0].status}: {failed[0].detail[:80]})"
            if failed
            else f"{len(done)} done in {span:.0f} s (submit to last: {wall:.0f} s)",
        ),
        Row(section, "deploys per minute", f"{len(done) / span * 60:.1f}"),
        Row(
            section,
            f"deploys per minute, first {tenth} / last {tenth} to finish",
            f"{pace(ends[: tenth + 1]):.1f} / {pace(ends[-tenth - 1 :]):.1f} (more models loaded and routed by then)",
        ),
        Row(
            section,
            "deploys running at once, on average",
            f"{busy / span:.2f} of {args.workers} workers (sum of deploy times / span)",
        ),
        Row(
            section,
            "one deploy, median by stage",
            ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in stage_medians.items()),
        ),
        Row(
            section,
            "GET /deploy-status/{id} while they ran",
            f"p99 {percentile(status_ms, 99):.0f} ms, median {statistics.median(status_ms):.0f} ms "
            f"({len(status_ms)} reads, {len(readers.failures)} failed)",
            percentile(status_ms, 99),
            ADMIN_TARGET_MS,
            f"< {ADMIN_TARGET_MS:.0f} ms",
        ),
    ]
    return rows


# -- admin at scale -----------------------------------------------------------------------------

ADMIN_TARGET_MS = 300.0
ADMIN_DEPLOYED = 500  # hundreds of models per server


def seed_registry(count: int, deployed: int) -> None:
    """``count`` registered models, model-0000 ..., the first ``deployed`` of them live."""
    from deployments.models import EmbeddingModel

    EmbeddingModel.objects.bulk_create(
        (
            EmbeddingModel(
                id=f"model-{i:04d}",
                name=f"customer {i} index",
                source="/models/tiny",
                dimensions=32,
                state=EmbeddingModel.State.DEPLOYED if i < deployed else EmbeddingModel.State.NOT_DEPLOYED,
                live_revision=f"{i:04d}deadbeefcafe" if i < deployed else "",
                endpoint=f"http://127.0.0.1:8080/v2/models/model-{i:04d}/infer" if i < deployed else "",
            )
            for i in range(count)
        ),
        batch_size=1000,
    )


def section_admin_at_scale(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "admin at scale"
    django_ready(args, workdir.parent / "django")
    from django.db import connection
    from django.test import Client
    from knox.models import AuthToken

    from bench.bench_operators import insert_tasks, measure_pages
    from deployments.models import Task
    from tests.support.factories import UserFactory

    started = time.monotonic()
    seed_registry(args.registered, ADMIN_DEPLOYED)
    step = 100_000
    for first in range(0, args.tasks, step):
        insert_tasks(first, min(step, args.tasks - first), args.tasks, models=args.registered)
    tasks = Task.objects.count()
    print(
        f"{section}: {connection.vendor}, {args.registered:,} models ({ADMIN_DEPLOYED} deployed), {tasks:,} tasks "
        f"seeded in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    user = UserFactory(username="bench-operator", is_staff=True, is_superuser=True)
    admin_client = Client()
    admin_client.force_login(user)
    _, key = AuthToken.objects.create(user=user, expiry=None)
    api_client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    model = f"model-{args.registered // 2:04d}"
    admin_pages = {
        "admin: models list": "/admin/deployments/embeddingmodel/",
        "admin: models list, deployed": "/admin/deployments/embeddingmodel/?state__exact=deployed",
        "admin: models list, searched": f"/admin/deployments/embeddingmodel/?q={model}",
        "admin: dashboard": "/admin/",
        "admin: tasks, status=failed": "/admin/deployments/deploymenttask/?status__exact=failed",
        "admin: tasks, one model": f"/admin/deployments/deploymenttask/?model={model}",
    }
    api_pages = {
        "API: GET /models": "/models",
        "API: GET /deploy-status/{id}": f"/deploy-status/{model}",
    }
    measured = measure_pages(admin_client, admin_pages, args.requests) | measure_pages(
        api_client, api_pages, args.requests
    )
    return [
        Row(
            section,
            f"{label} ({args.registered:,} models, {tasks:,} tasks)",
            f"p99 {p99:.0f} ms, median {p50:.0f} ms ({args.requests} requests)",
            p99,
            ADMIN_TARGET_MS,
            f"< {ADMIN_TARGET_MS:.0f} ms",
        )
        for label, (p50, p99) in measured.items()
    ]


# -- the table ----------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace, Path], list[Row]]] = {
    "load-stall": section_load_stall,
    "memory-plan": section_memory_plan,
    "reconcile": section_reconcile,
    "bulk-deploys": section_bulk_deploys,
    "admin-at-scale": section_admin_at_scale,
}


def report(rows: list[Row]) -> None:
    widths = [max(len(text) for text in column) for column in zip(*[(r.label, r.shown) for r in rows], strict=True)]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            print(f"\n{section}")
        line = f"  {row.label:<{widths[0]}}  {row.shown:<{widths[1]}}"
        if row.target_shown:
            line += f"  {row.target_shown:<10} {row.verdict}"
        print(line.rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--models", type=int, default=1000, help="models in the large repository (load stall)")
    parser.add_argument("--loads", type=int, default=10, help="loads of B at each repository size (load stall)")
    parser.add_argument("--memory-loaded", type=int, default=100, help="models loaded on the replica (memory plan)")
    parser.add_argument(
        "--reconcile-models", type=int, default=1000, help="deployed models at the large size (reconcile)"
    )
    parser.add_argument("--deploys", type=int, default=500, help="deploys of different models (bulk deploys)")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS of the cluster (bulk deploys)")
    parser.add_argument("--registered", type=int, default=10_000, help="registered models (admin at scale)")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="task rows (admin at scale)")
    parser.add_argument("--requests", type=int, default=20, help="requests per page (admin at scale)")
    parser.add_argument(
        "--database-url", help="an empty, throw-away PostgreSQL database (default: SQLite in the run's folder)"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for name in chosen:
            rows += SECTIONS[name](args, Path(tmp) / name)
    print(f"\n{os.cpu_count()} CPUs")
    report(rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
