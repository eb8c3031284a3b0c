"""Health that tells the truth: is the database there, the broker, a cluster that runs jobs, a worker
for the task that waits, the inference server?

``readiness()`` is what ``/readyz`` answers; ``engine_alerts()`` the sentences the admin dashboard shows
in red. Each check reports what it measured and never a secret (errors are named by their type only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from deployments import selectors
from deployments.inference import InferenceError, V2Client
from deployments.services.workers import last_proof, supervisor_gone_after, watchdog_bound


class CheckFailed(Exception):
    """A check ran and found something wrong; its details still belong in the answer."""

    def __init__(self, details: dict[str, Any]):
        super().__init__(details)
        self.details = details


@dataclass(frozen=True)
class Readiness:
    """Every check's answer. A check that passes may still say it is ``degraded`` (a sentence): the part
    works with less than it should (a replica down), so the status says so while the answer stays 200."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check["ok"]]

    @property
    def degraded(self) -> list[str]:
        return [name for name, check in self.checks.items() if check["ok"] and check.get("degraded")]

    @property
    def ok(self) -> bool:
        return not self.failing

    @property
    def status(self) -> str:
        return "failing" if self.failing else "degraded" if self.degraded else "ok"

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "failing": self.failing, "degraded": self.degraded, "checks": self.checks}


def check_database(now: datetime) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def check_broker(now: datetime) -> dict[str, Any]:
    """The ORM broker is the database (checked above); Redis must answer a PING, on a connection of its
    own with a timeout (django-q2's has none, so a blackholed Redis would hang the probe)."""
    if "redis" not in settings.Q_CLUSTER:
        return {"kind": "orm"}
    timeout = settings.READY_INFERENCE_TIMEOUT
    client = redis.Redis.from_url(settings.Q_CLUSTER["redis"], socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CheckFailed({"kind": "redis", "error": type(exc).__name__}) from exc
    finally:
        client.close()
    return {"kind": "redis"}


def check_workers(now: datetime) -> dict[str, Any]:
    """Every running cluster has run a canary within the watchdog's bound; at least one cluster runs."""
    bound = watchdog_bound().total_seconds()
    clusters = []
    for cluster in selectors.running_clusters(supervisor_seen_since=now - supervisor_gone_after()):
        age = (now - last_proof(cluster)).total_seconds()
        clusters.append(
            {
                "name": cluster.name,
                "heartbeat_age_s": round(age, 1),
                "restarts": cluster.restarts,
                "fresh": age <= bound,
            }
        )
    details = {"max_age_s": bound, "clusters": clusters}
    if not clusters:
        raise CheckFailed({**details, "error": "no worker cluster is running"})
    if stale := [cluster["name"] for cluster in clusters if not cluster["fresh"]]:
        raise CheckFailed({**details, "error": f"no heartbeat within {bound:.0f} s from {', '.join(stale)}"})
    return details


def check_pending(now: datetime) -> dict[str, Any]:
    """No task that could start has waited longer than READY_MAX_PENDING_SECONDS for a worker."""
    limit = settings.READY_MAX_PENDING_SECONDS
    waiting = selectors.longest_waiting_task()
    if waiting is None:
        return {"max_wait_s": limit, "longest_wait_s": 0}
    task, since = waiting
    age = (now - since).total_seconds()
    details = {"max_wait_s": limit, "longest_wait_s": round(age, 1), "task_id": str(task.pk)}
    if age > limit:
        raise CheckFailed({**details, "error": f"{task.kind} task {task.pk} has waited {age:.0f} s for a worker"})
    return details


def _answers(url: str) -> str | None:
    """None when ``url`` answers 200 within READY_INFERENCE_TIMEOUT, else what went wrong."""
    timeout = settings.READY_INFERENCE_TIMEOUT
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    return None if response.status_code == 200 else f"answered HTTP {response.status_code}"


def _ready_names(url: str) -> tuple[set[str] | None, str]:
    """What a live replica has ready (one repository index), or None and why it did not say."""
    try:
        with V2Client(url, timeout=settings.READY_INFERENCE_TIMEOUT) as client:
            return {entry["name"] for entry in client.index() if entry.get("state") == "READY"}, ""
    except InferenceError as exc:
        return None, f"its repository index failed ({type(exc).__name__})"


def check_inference(now: datetime) -> dict[str, Any]:
    """The router answers, and at least one replica is live (the router sends traffic only to those).
    Degraded while a replica is down, or empty: live but serving none of the live revisions (just
    restarted; the reconciler loads them back)."""
    live_names = selectors.live_served_names()
    health = []
    for url in settings.INFERENCE_REPLICA_URLS:
        ready, error = None, _answers(f"{url.rstrip('/')}/v2/health/live")
        if error is None:
            ready, error = _ready_names(url) if live_names else (set(), "")
        health.append(selectors.replica_health(url, ready, error, live_names))
    live = sum(replica.state != selectors.REPLICA_DOWN for replica in health)
    details: dict[str, Any] = {"replicas_live": f"{live}/{len(health)}"}
    for state in (selectors.REPLICA_DOWN, selectors.REPLICA_EMPTY):
        if named := {replica.url: replica.why for replica in health if replica.state == state}:
            details[f"replicas_{state}"] = named
    if router_error := _answers(f"{settings.ROUTER_ADMIN_URL.rstrip('/')}/ready"):
        raise CheckFailed({**details, "error": f"router: {router_error}"})
    if not live:
        raise CheckFailed({**details, "error": "no inference replica is live"})
    if not_serving := [replica for replica in health if not replica.serving]:
        states = ", ".join(f"{replica.url} {replica.state}" for replica in not_serving)
        details["degraded"] = f"{len(health) - len(not_serving)} of {len(health)} replica(s) serving ({states})"
    return details


READINESS_CHECKS: dict[str, Callable[[datetime], dict[str, Any]]] = {
    "database": check_database,
    "broker": check_broker,
    "workers": check_workers,
    "pending": check_pending,
    "inference": check_inference,
}
# What the admin dashboard warns about: the task engine itself (the server has its own pages).
ENGINE_CHECKS = ("workers", "pending")


def run_checks(names: tuple[str, ...] | None = None, now: datetime | None = None) -> Readiness:
    now = now or timezone.now()
    checks: dict[str, dict[str, Any]] = {}
    for name in names or tuple(READINESS_CHECKS):
        try:
            checks[name] = {"ok": True, **READINESS_CHECKS[name](now)}
        except CheckFailed as exc:
            checks[name] = {"ok": False, **exc.details}
        except Exception as exc:  # a check that cannot run is a failing part, named by its error type only
            checks[name] = {"ok": False, "error": type(exc).__name__}
    return Readiness(checks)


def readiness(now: datetime | None = None) -> Readiness:
    return run_checks(now=now)


def cluster_on_host_is_proven(host: str, now: datetime | None = None) -> bool:
    """True if a cluster supervised on ``host`` ran a canary within the watchdog's bound (a liveness probe)."""
    now = now or timezone.now()
    clusters = selectors.running_clusters(supervisor_seen_since=now - supervisor_gone_after())
    return any(
        cluster.host == host and cluster.last_canary_at and now - cluster.last_canary_at <= watchdog_bound()
        for cluster in clusters
    )


def engine_alerts(now: datetime | None = None) -> list[str]:
    """What is wrong with the task engine right now, one sentence per failing part (empty when healthy)."""
    report = run_checks(ENGINE_CHECKS, now)
    return [f"{name}: {report.checks[name].get('error', 'failing')}" for name in report.failing]
