"""What the admin index shows an operator first: work in flight, the last day's outcomes, the latest
failures and what is deployed. Rendered by the ``control_room`` template tag.

A fixed number of small queries, each served by an index, whatever the number of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from deployments import selectors
from deployments.admin.display import (
    REPLICA_COLOURS,
    STATUS_COLOURS,
    badge,
    human_duration,
    task_admin_url,
    task_list_url,
)
from deployments.models import ACTIVE_STATUSES, Drift, EmbeddingModel, Task, TaskKind, TaskStatus
from deployments.services.health import engine_alerts
from deployments.task_ids import short_id

RUNNING_SHOWN = 20
REPLICAS_SHOWN = 20
# With hundreds of models deployed, the page lists the latest changed; the models list has them all.
DEPLOYED_SHOWN = 20
ENGINE_EVENTS_SHOWN = 5


@dataclass(frozen=True)
class Dashboard:
    in_flight: dict[str, dict[str, int]]  # kind -> status -> count (pending, processing)
    running: list[Task]  # processing tasks, oldest first
    outcomes_24h: dict[str, dict[str, int]]  # kind -> status -> count of tasks created in the last 24 hours
    latest_failures: list[Task]  # failed or refused, not made good since by a later done task (see selectors)
    deployed_models: list[EmbeddingModel]  # the DEPLOYED_SHOWN most recently changed
    deployed_count: int
    slot_count: int  # models holding a slot on the server (deploying, deployed, deleting)
    max_deployed: int
    drifts: list[Drift]  # open: the server does not serve what the registry says is live

    @property
    def in_flight_total(self) -> int:
        return sum(sum(counts.values()) for counts in self.in_flight.values())


def dashboard(now: datetime | None = None, *, failures: int = 8) -> Dashboard:
    """In-flight counts use the partial (pending, processing) index; the last 24 hours and the latest
    failures read the created_at and (status, created_at) indexes backwards."""
    now = now or timezone.now()
    in_flight = {kind: dict.fromkeys(ACTIVE_STATUSES, 0) for kind in TaskKind.values}
    active = Task.objects.filter(status__in=ACTIVE_STATUSES).values("kind", "status").annotate(n=Count("pk")).order_by()
    for row in active:
        in_flight[row["kind"]][row["status"]] = row["n"]
    # One conditional count per (kind, status) over the created_at range, not GROUP BY: grouping tempts
    # SQLite into walking a whole status index instead of the last day.
    counts = Task.objects.filter(created_at__gte=now - timedelta(hours=24)).aggregate(
        **{
            f"{kind}__{status}": Count("pk", filter=Q(kind=kind, status=status))
            for kind in TaskKind.values
            for status in TaskStatus.values
        }
    )
    outcomes = {kind: {status: counts[f"{kind}__{status}"] for status in TaskStatus.values} for kind in TaskKind.values}
    deployed = EmbeddingModel.objects.filter(state=EmbeddingModel.State.DEPLOYED)
    return Dashboard(
        in_flight=in_flight,
        running=list(Task.objects.filter(status=TaskStatus.PROCESSING).order_by("started_at")[:RUNNING_SHOWN]),
        outcomes_24h=outcomes,
        latest_failures=selectors.unresolved_failures(failures),
        deployed_models=list(deployed.order_by("-updated_at")[:DEPLOYED_SHOWN]),
        deployed_count=deployed.count(),
        slot_count=EmbeddingModel.objects.filter(state__in=EmbeddingModel.SLOT_STATES).count(),
        max_deployed=settings.MAX_DEPLOYED_MODELS,
        drifts=list(selectors.open_drifts()[:RUNNING_SHOWN]),
    )


def dashboard_context(now: datetime | None = None) -> dict[str, Any]:
    """The template's context: the dashboard's facts with their links, colours and durations."""
    now = now or timezone.now()
    dash = dashboard(now)
    lists = {kind: task_list_url(kind) for kind in TaskKind.values}
    in_flight = [
        {"kind": kind, "url": lists[kind], "pending": counts["pending"], "processing": counts["processing"]}
        for kind, counts in dash.in_flight.items()
    ]
    outcomes = [
        {
            "kind": kind,
            "url": lists[kind],
            "cells": [
                {"status": status, "count": counts[status], "colour": STATUS_COLOURS[status]}
                for status in TaskStatus.values
            ],
        }
        for kind, counts in dash.outcomes_24h.items()
    ]
    running = [
        {
            "task": task,
            "kind": task.kind,
            "url": task_admin_url(task.kind, task.pk),
            "short_id": short_id(task.pk),
            "stage": task.stage,
            "duration": human_duration((now - (task.started_at or task.created_at)).total_seconds()),
        }
        for task in dash.running
    ]
    failures = [
        {
            "task": task,
            "kind": task.kind,
            "url": task_admin_url(task.kind, task.pk),
            "short_id": short_id(task.pk),
            "colour": STATUS_COLOURS[task.status],
            "retry_url": task_admin_url(task.kind, task.retry_id) if task.retry_id else "",
            "retry_short_id": short_id(task.retry_id or ""),
        }
        for task in dash.latest_failures
    ]
    return {
        **replicas_context(),
        # Red while no cluster proves it runs jobs or a task waits too long for a worker: the truth first.
        "engine_alerts": engine_alerts(now),
        "engine_events": selectors.recent_engine_events(ENGINE_EVENTS_SHOWN),
        "dash": dash,
        "in_flight": in_flight,
        "statuses": TaskStatus.choices,
        "outcomes": outcomes,
        "running": running,
        "failures": failures,
    }


def replicas_context() -> dict[str, Any]:
    """The inference replicas as the reconciler last saw them (it looks every few seconds), those not
    serving first: a replica down, or empty (live, serving none of the live revisions)."""
    health = selectors.recorded_replica_health(settings.INFERENCE_REPLICA_URLS)
    rows = [
        {
            "url": replica.url,
            "state": replica.state,
            "why": replica.why,
            "checked_at": checked_at,
            "badge": badge(replica.state, REPLICA_COLOURS[replica.state]),
        }
        for replica, checked_at in sorted(health, key=lambda pair: pair[0].serving)
    ]
    serving = sum(replica.serving for replica, _ in health)
    return {"replicas": rows[:REPLICAS_SHOWN], "replicas_total": len(rows), "replicas_serving": serving}
