"""The control plane's Prometheus metrics: what /metrics serves.

Two sources, merged in one registry per scrape:

- observed where they happen, in whichever process: how long each stage of a task took
  (``controlplane_task_stage_duration_seconds``) and how long whole deploys took
  (``controlplane_deploy_duration_seconds``). Workers are processes of their own, so these live in
  prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR) that the scrape merges, as do
  django-prometheus's request and database metrics;
- read from the database when scraped (``ControlPlaneCollector``): tasks by kind and status, the
  oldest pending task, lease and heartbeat ages, open drifts, models deployed and slots used, each
  inference server's memory used and budget. The
  database is the source of truth, so every web process answers the same.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from deployments import selectors
from deployments.models import EmbeddingModel, TaskKind, TaskStatus

logger = logging.getLogger(__name__)

STAGE_DURATION = Histogram(
    "controlplane_task_stage_duration_seconds",
    "How long a stage of a task took, by task kind, stage and how it ended (done or failed).",
    ["kind", "stage", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
DEPLOY_DURATION = Histogram(
    "controlplane_deploy_duration_seconds",
    "How long a deployment task ran, from its worker taking it to done (the wait in the queue excluded).",
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800),
)


def observe_stage(kind: str, stage: str, outcome: str, duration_s: float) -> None:
    STAGE_DURATION.labels(kind=kind, stage=stage, outcome=outcome).observe(duration_s)


def observe_deploy(duration_s: float) -> None:
    DEPLOY_DURATION.observe(duration_s)


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max((now - since).total_seconds(), 0.0)


class ControlPlaneCollector(Collector):
    """Gauges computed from the database at each scrape."""

    def collect(self) -> Iterator[Metric]:
        database_up = GaugeMetricFamily(
            "controlplane_database_up", "1 if the scrape could read the control plane's database, else 0."
        )
        try:
            state = selectors.control_plane_state()
        except DatabaseError as exc:
            # A scrape still answers (request and worker metrics matter most while the database is down).
            logger.warning("metrics: the database could not be read: %s", type(exc).__name__)
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up
        yield from self._gauges(state, timezone.now())

    def _gauges(self, state: selectors.ControlPlaneState, now: datetime) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("controlplane_tasks", "Tasks by kind and status.", labels=["kind", "status"])
        # Every combination, zeros included, so a series does not vanish when its last task moves on.
        for kind in TaskKind.values:
            for status in TaskStatus.values:
                tasks.add_metric([kind, status], state.tasks.get((kind, status), 0))
        yield tasks

        yield GaugeMetricFamily(
            "controlplane_oldest_pending_task_age_seconds",
            "Seconds since the oldest pending task was created; 0 when none is pending.",
            value=_age(now, state.oldest_pending_created_at) or 0.0,
        )

        lease_age = GaugeMetricFamily(
            "controlplane_model_lease_heartbeat_age_seconds",
            "Per held model lease, seconds since its holder last took or renewed it (a lease expires at "
            "TASK_LEASE_SECONDS).",
            labels=["embedding_model_id"],
        )
        for model_id, expires_at in sorted(state.lease_expiries.items()):
            renewed_at_age = settings.TASK_LEASE_SECONDS - (expires_at - now).total_seconds()
            lease_age.add_metric([model_id], max(renewed_at_age, 0.0))
        yield lease_age

        canary_age = GaugeMetricFamily(
            "controlplane_worker_canary_age_seconds",
            "Per running worker cluster, seconds since it last ran a canary job (its proof it runs jobs).",
            labels=["cluster"],
        )
        supervisor_age = GaugeMetricFamily(
            "controlplane_worker_supervisor_heartbeat_age_seconds",
            "Per running worker cluster, seconds since its supervisor (run_workers) last stamped its row.",
            labels=["cluster"],
        )
        for cluster in state.clusters:
            if (age := _age(now, cluster.last_canary_at)) is not None:
                canary_age.add_metric([cluster.name], age)
            if (age := _age(now, cluster.supervisor_seen_at)) is not None:
                supervisor_age.add_metric([cluster.name], age)
        yield canary_age
        yield supervisor_age

        yield GaugeMetricFamily(
            "controlplane_open_drifts",
            "Models whose served revision differs from the registry's, not yet resolved by the reconciler.",
            value=state.open_drifts,
        )
        yield GaugeMetricFamily(
            "controlplane_models_deployed",
            "Models the registry says are live.",
            value=state.models_by_state.get(EmbeddingModel.State.DEPLOYED, 0),
        )
        yield GaugeMetricFamily(
            "controlplane_model_slots_used",
            "Models holding a slot on the inference servers (deploying, deployed or deleting).",
            value=sum(state.models_by_state.get(slot_state, 0) for slot_state in EmbeddingModel.SLOT_STATES),
        )
        yield GaugeMetricFamily(
            "controlplane_model_slots_max",
            "MAX_DEPLOYED_MODELS: the slots there are.",
            value=settings.MAX_DEPLOYED_MODELS,
        )

        memory_used = GaugeMetricFamily(
            "controlplane_replica_memory_used_bytes",
            "Per inference server, the recorded footprints of the revisions it has loaded (as the reconciler "
            "last saw it) and of those running deploys reserved.",
            labels=["replica"],
        )
        memory_budget = GaugeMetricFamily(
            "controlplane_replica_memory_budget_bytes",
            "Per inference server, REPLICA_MEMORY_BYTES: the bytes of weights it may hold.",
            labels=["replica"],
        )
        for url, memory in sorted(state.replica_memory.items()):
            memory_used.add_metric([url], memory.used_bytes)
            memory_budget.add_metric([url], memory.budget_bytes)
        yield memory_used
        yield memory_budget


class WrittenFilesCollector(MultiProcessCollector):
    """prometheus_client's multiprocess merge, of the files that hold something: a process killed while it
    created its file leaves it empty, and merging an empty file raises (every scrape would answer 500)."""

    def collect(self) -> Iterator[Metric]:
        files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _holds_something(path)]
        return self.merge(files, accumulate=True)


def _holds_something(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a live gauge's file removed since the glob, as the library allows
        return False


def render_metrics() -> tuple[bytes, str]:
    """The scrape's body and content type: every process's observed metrics plus the database's gauges."""
    registry = CollectorRegistry()
    WrittenFilesCollector(registry, path=str(settings.PROMETHEUS_MULTIPROC_DIR))
    registry.register(ControlPlaneCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
