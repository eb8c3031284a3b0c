"""How tasks and models look in the admin: coloured badges, links, durations, the stage timeline
and the metadata summary. Pure presentation; the one query here is a task's timeline."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from deployments import selectors
from deployments.models import TASK_PROXIES, EmbeddingModel, Task, TaskStatus

# Messages name at most this many tasks, then say how many more.
MAX_NAMED_IN_MESSAGE = 20

STATUS_COLOURS = {
    TaskStatus.PENDING: "#6b7280",
    TaskStatus.PROCESSING: "#2563eb",
    TaskStatus.DONE: "#15803d",
    TaskStatus.FAILED: "#b91c1c",
    TaskStatus.REFUSED: "#c2410c",
    TaskStatus.CANCELED: "#57534e",
}
STATE_COLOURS = {
    EmbeddingModel.State.NOT_DEPLOYED: "#6b7280",
    EmbeddingModel.State.DEPLOYING: "#2563eb",
    EmbeddingModel.State.DEPLOYED: "#15803d",
    EmbeddingModel.State.DELETING: "#c2410c",
}
DRIFT_COLOUR = "#b91c1c"
EVENT_STATE_COLOURS = {"done": "#15803d", "failed": "#b91c1c", "started": "#2563eb"}


def badge(label: str, colour: str) -> SafeString:
    return format_html('<span class="cr-badge" style="background:{}">{}</span>', colour, label)


def status_badge(status: str) -> SafeString:
    label = TaskStatus(status).label if status in TaskStatus.values else status
    return badge(label, STATUS_COLOURS.get(status, "#444"))


def task_list_url(kind: str) -> str:
    return reverse(f"admin:deployments_{TASK_PROXIES[kind]._meta.model_name}_changelist")


def task_admin_url(kind: str, task_id: str) -> str:
    # Quoted as the admin quotes primary keys: a client's id may hold '_' or ':'.
    return reverse(f"admin:deployments_{TASK_PROXIES[kind]._meta.model_name}_change", args=[quote(task_id)])


def task_link(kind: str, task_id: str) -> SafeString:
    url = task_admin_url(kind, task_id)
    return format_html('<a href="{}" title="{}"><code>{}</code></a>', url, task_id, str(task_id)[:8])


def model_link(embedding_model_id: str) -> SafeString:
    url = reverse("admin:deployments_embeddingmodel_change", args=[quote(embedding_model_id)])
    return format_html('<a href="{}">{}</a>', url, embedding_model_id)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def task_duration(task: Task) -> str:
    if task.started_at and task.finished_at:
        return human_duration((task.finished_at - task.started_at).total_seconds())
    if task.started_at:
        return f"running {human_duration((timezone.now() - task.started_at).total_seconds())}"
    return "—"


def summarize(prefix: str, items: list[str]) -> str:
    shown = "; ".join(items[:MAX_NAMED_IN_MESSAGE])
    more = f"; and {len(items) - MAX_NAMED_IN_MESSAGE} more" if len(items) > MAX_NAMED_IN_MESSAGE else ""
    return f"{prefix}: {shown}{more}"


def short(task: Task) -> str:
    return f"{task.embedding_model_id} {str(task.pk)[:8]}"


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="cr-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, default=str))


def timeline_rows(task: Task) -> list[dict[str, Any]]:
    """One row per stage: when it started, how it ended, how long it took, and what it said.

    The engine records a stage's start and its end as two events; an operator reads them as one
    step, so they are folded together (a stage that never ended shows as still started).
    Status changes are rows of their own, with who made them.
    """
    start = task.started_at or task.created_at
    rows: list[dict[str, Any]] = []
    for event in selectors.task_events(task):
        row = rows[-1] if rows and rows[-1]["stage"] == event.stage and rows[-1]["state"] == "started" else None
        if row is None:
            row = {"stage": event.stage, "at": event.created_at, "messages": [], "actor": event.actor}
            row["offset"] = human_duration(max(0.0, (event.created_at - start).total_seconds()))
            rows.append(row)
        row["state"] = event.state
        row["colour"] = EVENT_STATE_COLOURS.get(event.state) or STATUS_COLOURS.get(event.state, "#6b7280")
        row["took"] = human_duration(event.duration_s) if event.duration_s is not None else ""
        if event.message and event.message not in row["messages"]:
            row["messages"].append(event.message)
    return rows


# The facts of a task's metadata worth a line of their own; the rest is shown as JSON below them.
METADATA_FACTS = (
    ("revision", "revision"),
    ("previous_revision", "previous revision"),
    ("endpoint", "endpoint"),
    ("dimensions", "dimensions"),
    ("failed_stage", "failed at stage"),
    ("reason", "reason"),
    ("removed_revisions", "removed revisions"),
    ("unloaded", "unloaded"),
    ("lost", "worker lost"),
    ("retried_as", "retried as"),
)


def metadata_context(metadata: dict[str, Any]) -> dict[str, Any]:
    facts = [
        (label, ", ".join(map(str, value)) if isinstance(value, list) else value)
        for key, label in METADATA_FACTS
        if (value := metadata.get(key)) not in (None, "", [])
    ]
    timings = [(stage, human_duration(seconds)) for stage, seconds in (metadata.get("timings") or {}).items()]
    return {"facts": facts, "timings": timings, "raw": pretty_json(metadata)}
