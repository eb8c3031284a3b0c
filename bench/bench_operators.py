"""Benchmark of the operators' surfaces: admin pages with a million tasks, and enqueueing 1,000 deploys.
Not part of the test suite.

    .venv/bin/python bench/bench_operators.py [--rows 1000000] [--requests 20] [--database-url URL]

Everything runs against a throw-away database: a SQLite file in a temporary folder, unless
--database-url names an empty PostgreSQL database made for the purpose. Printed side by side:

1. server time of the admin pages (Django's test client, in process, logged in as a superuser;
   p50 and p99 of --requests requests after a warm-up) with 1,000 deployment tasks and then with
   --rows (default 1,000,000), and the ratio: the task changelist (plain, filtered by status, by
   model, by date, searched by a whole task id, by its first 8 characters and by part of a model
   id), a task's detail page with its timeline, the dashboard
   (admin index) and the models list. Target: changelist under 300 ms with a million rows.
2. enqueueing 1,000 deploys through the deploy_models command path (one batch) against 1,000
   single submits through the per-task service (what the API does per request), on the default
   ORM broker, with the million rows in place; and the ratio.

Rows are generated inside the database (INSERT ... SELECT) into the one task table, both kinds
mixed (every fourth row a deletion), 90% done, 6% failed, 2% refused and 2% canceled, spread over
1,000 models and 100 days.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from io import StringIO
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODELS = 1000
DAYS = 100


def setup_django(workdir: Path, database_url: str | None) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_VAR_DIR": str(workdir),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            "ALLOWED_HOSTS": "testserver",
            "LOG_LEVEL": "WARNING",
            "DEBUG": "false",
        }
    )
    os.environ.pop("REDIS_URL", None)  # the default ORM broker: the slower one for enqueueing
    sys.path.insert(0, str(PROJECT_ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import logging

    logging.getLogger("django-q").setLevel(logging.WARNING)


# -- seeding ----------------------------------------------------------------------------------


def seed_models() -> None:
    from deployments.inference.packaged import packaged_model_dir
    from deployments.models import EmbeddingModel

    source = str(packaged_model_dir())
    EmbeddingModel.objects.bulk_create(
        [
            EmbeddingModel(
                id=f"model-{i:04d}",
                name=f"model {i}",
                source=source,
                dimensions=384,
                state="deployed" if i < 20 else "not_deployed",
                live_revision=f"{i:04d}deadbeefcafe" if i < 20 else "",
                endpoint=f"http://127.0.0.1:8080/v2/models/model-{i:04d}/infer" if i < 20 else "",
            )
            for i in range(MODELS)
        ],
        batch_size=500,
    )


def insert_tasks(first: int, count: int, total_planned: int, models: int = MODELS) -> None:
    """Rows first .. first+count-1 of a history of total_planned rows: newest rows have the lowest index,
    spread over ``models`` models (model-0000 ...)."""
    from django.db import connection

    status = (
        "CASE WHEN i % 100 < 90 THEN 'done' WHEN i % 100 < 96 THEN 'failed' "
        "WHEN i % 100 < 98 THEN 'refused' ELSE 'canceled' END"
    )
    detail = (
        "CASE WHEN i % 100 < 90 THEN 'revision r1 serves' WHEN i % 100 < 96 THEN 'smoke_test: bad dimensions' "
        "WHEN i % 100 < 98 THEN 'validate: 20 models are deployed' ELSE 'canceled before it started' END"
    )
    span = DAYS * 86400.0
    kind = "CASE WHEN i % 4 = 3 THEN 'deletion' ELSE 'deployment' END"
    columns = (
        "id, kind, embedding_model_id, status, detail, metadata, config, sequence, attempt, requested_by, "
        "lease_owner, started_at, finished_at, created_at, updated_at"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            created = f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i * {span} / {total_planned}) || ' seconds')"
            cursor.execute(
                f"""
                INSERT INTO deployments_task ({columns})
                WITH RECURSIVE seq(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM seq WHERE i < {first + count - 1})
                SELECT lower(hex(randomblob(16))), {kind}, printf('model-%04d', i % {models}), {status}, {detail},
                       '{{"attempt": 1, "retry_of": null}}', '{{}}', {total_planned} - i, 1, 'bench', '',
                       {created}, {created}, {created}, {created}
                FROM seq
                """
            )
        else:
            created = f"now() - make_interval(secs => i * {span} / {total_planned})"
            cursor.execute(
                f"""
                INSERT INTO deployments_task ({columns})
                SELECT md5(random()::text || i)::uuid, {kind}, 'model-' || lpad((i % {models})::text, 4, '0'),
                       {status}, {detail}, '{{"attempt": 1, "retry_of": null}}'::jsonb, '{{}}'::jsonb,
                       {total_planned} - i, 1, 'bench', '', {created}, {created}, {created}, {created}
                FROM generate_series({first}, {first + count - 1}) AS i
                """
            )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE deployments_task")


def seed_task_with_timeline():
    """A real-looking finished deploy with its 14 timeline events, for the detail page."""
    from deployments.models import DeploymentTask, TaskEvent

    stages = ["validate", "fetch", "stage_green", "smoke_test", "retire_green", "promote", "done"]
    task = DeploymentTask.objects.create(
        embedding_model_id="model-0001",
        status="done",
        sequence=10**9,
        detail="revision r1 serves at http://127.0.0.1:8080/v2/models/model-0001/infer",
        metadata={
            "attempt": 1,
            "retry_of": None,
            "revision": "r1",
            "endpoint": "http://127.0.0.1:8080/v2/models/model-0001/infer",
            "dimensions": 384,
            "timings": dict.fromkeys(stages, 0.25),
        },
    )
    for stage in stages:
        TaskEvent.objects.create(task=task, stage=stage, state="started")
        TaskEvent.objects.create(task=task, stage=stage, state="done", duration_s=0.25, message="ok")
    return task


# -- 1. admin pages ---------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_pages(client, pages: dict[str, str], requests: int) -> dict[str, tuple[float, float]]:
    results = {}
    for name, url in pages.items():
        for _ in range(2):  # warm-up: templates, caches, connections
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
        results[name] = (statistics.median(samples), percentile(samples, 0.99))
    return results


def admin_pages(task_id: str) -> dict[str, str]:
    tasks = "/admin/deployments/deploymenttask/"
    deletions = "/admin/deployments/deletiontask/"
    return {
        "task changelist": tasks,
        "  filtered: status=canceled": f"{tasks}?status__exact=canceled",
        "  filtered: model": f"{tasks}?model=model-0007",
        "  filtered: last 24 hours": f"{tasks}?created=24h",
        "  page 5": f"{tasks}?p=5",
        "  search: task id": f"{tasks}?q={task_id}",
        "  search: short task id": f"{tasks}?q={task_id[:8]}",
        "  search: part of a model id": f"{tasks}?q=el-0007",
        "deletion changelist": deletions,
        "  filtered: status=failed": f"{deletions}?status__exact=failed",
        "task detail + timeline": f"{tasks}{task_id}/change/",
        "dashboard (admin index)": "/admin/",
        "models changelist": "/admin/deployments/embeddingmodel/",
    }


# -- 2. enqueueing ----------------------------------------------------------------------------


def enqueue_batch(workdir: Path, prefix: str) -> float:
    from django.core.management import call_command

    id_file = workdir / f"{prefix}.txt"
    id_file.write_text("\n".join(f"model-{i:04d}" for i in range(MODELS)))
    started = time.perf_counter()
    call_command("deploy_models", "--file", str(id_file), stdout=StringIO(), stderr=StringIO())
    return time.perf_counter() - started


def enqueue_singly() -> float:
    from deployments import services

    started = time.perf_counter()
    for i in range(MODELS):
        services.submit_deployment(f"model-{i:04d}", config={}, requested_by="bench")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Task rows (both kinds) for the large run.")
    parser.add_argument("--requests", type=int, default=20, help="Requests per page and size.")
    parser.add_argument("--database-url", help="An empty, throw-away PostgreSQL database (default: temp SQLite).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-operators-") as tmp:
        workdir = Path(tmp)
        setup_django(workdir, args.database_url)
        from django.db import connection
        from django.test import Client

        from deployments.models import Task
        from tests.support.factories import UserFactory

        print(f"database: {connection.vendor}; {MODELS} models; tasks spread over {DAYS} days")
        seed_models()
        client = Client()
        client.force_login(UserFactory(username="bench", is_staff=True, is_superuser=True))

        small = 1000
        insert_tasks(0, small, args.rows)
        task = seed_task_with_timeline()
        pages = admin_pages(str(task.pk))
        at_small = measure_pages(client, pages, args.requests)

        started = time.perf_counter()
        step = 100_000
        for first in range(small, args.rows, step):
            insert_tasks(first, min(step, args.rows - first), args.rows)
        rows = Task.objects.count()
        print(f"inserted {rows - small - 1:,} more task rows in {time.perf_counter() - started:.1f}s")
        at_large = measure_pages(client, pages, args.requests)

        print(f"\n1. admin server time, ms (p50 / p99 of {args.requests} requests), 1,000 vs {rows:,} task rows")
        print(f"{'page':32} {'1,000 rows':>16} {f'{rows:,} rows':>20} {'ratio p50':>10}")
        for name in pages:
            (p50_small, p99_small), (p50_large, p99_large) = at_small[name], at_large[name]
            print(
                f"{name:32} {p50_small:7.1f} / {p99_small:6.1f} {p50_large:10.1f} / {p99_large:7.1f} "
                f"{p50_large / p50_small:9.2f}x"
            )
        verdict = "met" if at_large["task changelist"][0] < 300 else "MISSED"
        print(f"target: task changelist under 300 ms with {rows:,} rows: {verdict}")

        batch = enqueue_batch(workdir, "first")
        single = enqueue_singly()
        batch_again = enqueue_batch(workdir, "second")
        print(f"\n2. enqueueing {MODELS:,} deploys (ORM broker, {rows:,} task rows in place)")
        print(f"   deploy_models (one batch):          {batch:6.2f} s, again {batch_again:6.2f} s")
        print(f"   {MODELS:,} x submit_deployment (per task): {single:6.2f} s")
        print(f"   ratio single / batch:               {single / min(batch, batch_again):6.1f}x")


if __name__ == "__main__":
    main()
