"""How tasks and models look in the admin: coloured badges, links, durations, the stage timeline,
the metadata summary and the audit trail. Pure presentation; the queries here are a task's timeline
and an audit trail's latest entries."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.admin.utils import quote
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors
from deployments.clock import format_time, relative_time
from deployments.models import TASK_PROXIES, AuditEntry, EmbeddingModel, Task, TaskKind, TaskStatus
from deployments.task_ids import short_id

# Messages name at most this many tasks, then say how many more.
MAX_NAMED_IN_MESSAGE = 20

# A task's or a model's page shows this many of its latest audit entries, then links to all of them.
AUDIT_ENTRIES_SHOWN = 50

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
# A replica down is red, one empty (live, serving none of the live revisions) amber.
REPLICA_COLOURS = {
    selectors.REPLICA_SERVING: "#15803d",
    selectors.REPLICA_EMPTY: "#b45309",
    selectors.REPLICA_DOWN: "#b91c1c",
    selectors.REPLICA_UNCHECKED: "#57534e",
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
    return format_html('<a href="{}" title="{}"><code>{}</code></a>', url, task_id, short_id(task_id))


def revision_code(revision: str | None, empty: str = "—") -> SafeString:
    """A revision as every admin page shows it: whole. A revision is only 16 hex digits, and it is what an
    operator copies into a deploy's ``revision`` to roll back, which a shortened one would not fit."""
    if not revision:
        return format_html("{}", empty)
    return format_html('<code class="cr-revision">{}</code>', revision)


def model_link(embedding_model_id: str) -> SafeString:
    url = reverse("admin:deployments_embeddingmodel_change", args=[quote(embedding_model_id)])
    return format_html('<a href="{}">{}</a>', url, embedding_model_id)


def time_ago(moment: datetime | None, now: datetime | None = None) -> SafeString:
    """``3 min ago`` for a list an operator scans, the absolute time (deployments.clock) as its tooltip."""
    if moment is None:
        return mark_safe("—")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', moment.isoformat(), format_time(moment), relative_time(moment, now)
    )


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
    return f"{task.embedding_model_id} {short_id(task.pk)}"


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


REVISION_FACTS = {"revision", "previous_revision", "removed_revisions"}


def metadata_context(metadata: dict[str, Any]) -> dict[str, Any]:
    def shown(key: str, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if key in REVISION_FACTS:
            return format_html_join(", ", "{}", ((revision_code(str(item)),) for item in values))
        return ", ".join(map(str, values))

    facts = [
        (label, shown(key, value))
        for key, label in METADATA_FACTS
        if (value := metadata.get(key)) not in (None, "", [])
    ]
    timings = [(stage, human_duration(seconds)) for stage, seconds in (metadata.get("timings") or {}).items()]
    return {"facts": facts, "timings": timings, "raw": pretty_json(metadata)}


# -- The audit trail ----------------------------------------------------------------------------------


def audit_list_url(**filters: str) -> str:
    """The audit entries' list in the admin, narrowed by field lookups (e.g. embedding_model_id=...)."""
    return f"{reverse('admin:deployments_auditentry_changelist')}?{urlencode(filters)}"


def audit_object_link(entry: AuditEntry) -> SafeString:
    if entry.object_kind in TaskKind.values:
        return format_html("{} {}", entry.object_kind, task_link(entry.object_kind, entry.object_id))
    return format_html("model {}", model_link(entry.object_id))


def audit_change_lines(entry: AuditEntry) -> list[str]:
    """One line per change: ``field: old → new`` for a registry field, ``key: value`` for what a task was asked."""

    def shown(value: Any) -> str:
        return "—" if value is None or value == "" else json.dumps(value, sort_keys=True, default=str).strip('"')

    lines = []
    for name, value in entry.changes.items():
        if entry.object_kind == AuditEntry.ObjectKind.EMBEDDING_MODEL and isinstance(value, list) and len(value) == 2:
            lines.append(f"{name}: {shown(value[0])} → {shown(value[1])}")
        else:
            lines.append(f"{name}: {shown(value)}")
    return lines


def audit_trail(entries: QuerySet[AuditEntry], all_entries_url: str) -> str:
    """The latest entries as a table (one query), and a link to the rest when there are more."""
    latest = list(entries[: AUDIT_ENTRIES_SHOWN + 1])
    rows = [
        {
            "at": entry.at,
            "actor": entry.actor,
            "via": entry.get_via_display(),
            "action": entry.get_action_display(),
            "object": audit_object_link(entry),
            "changes": audit_change_lines(entry),
            "ip": entry.ip or "",
            "request_id": entry.request_id,
        }
        for entry in latest[:AUDIT_ENTRIES_SHOWN]
    ]
    context = {"rows": rows, "more": len(latest) > AUDIT_ENTRIES_SHOWN, "all_entries_url": all_entries_url}
    return render_to_string("admin/deployments/audit_trail.html", context)
