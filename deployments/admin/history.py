"""The read-only task history: one list per kind (the proxies), each task's timeline and outcome,
and retry / cancel actions that go through the same services as the API.

Both lists read the one task table; the "kind" filter switches between them and keeps the other
filters. History itself is never edited: retry creates a new attempt, cancel finishes a pending task.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors
from deployments.admin.display import (
    audit_list_url,
    audit_trail,
    metadata_context,
    model_link,
    pretty_json,
    short,
    status_badge,
    summarize,
    task_duration,
    task_link,
    time_ago,
    timeline_rows,
)
from deployments.admin.filters import CappedCountPaginator, CreatedFilter, KindFilter, ModelFilter
from deployments.models import AuditEntry, DeletionTask, DeploymentTask, Task
from deployments.services.audit import Actor, actor_from_request
from deployments.services.bulk import BulkOutcome, TaskVerdict, cancel_many, retry_many
from deployments.task_ids import is_valid_task_id

# A bulk action over more tasks than this is refused whole: narrow the filter first.
MAX_ACTION_TASKS = 1000


class ReadOnlyAdminMixin:
    """Rows written only by the task engine: operators may look, never add, edit or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class TaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only history of one kind of task. Retry and cancel are actions: they create or finish
    tasks through the services, history itself is never edited."""

    list_display = ("short_id", "coloured_status", "model_id_link", "created", "duration", "attempt", "short_detail")
    list_display_links = ("short_id",)
    list_filter = (KindFilter, "status", ModelFilter, CreatedFilter)
    search_fields = ("id", "embedding_model_id")  # matched exactly in get_search_results
    search_help_text = "An exact task id or embedding model id."
    ordering = ("-created_at",)
    list_per_page = 100
    paginator = CappedCountPaginator
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per filter choice
    actions = ["retry_selected", "cancel_selected"]
    fieldsets = (
        (
            None,
            {"fields": ("task_id", "kind", "model_id_link", "coloured_status", "detail", "attempts", "requested_by")},
        ),
        ("Timeline", {"fields": ("timeline",)}),
        ("Outcome", {"fields": ("outcome",)}),
        ("Audit", {"fields": ("audit",)}),
        ("Request", {"fields": ("config_json", "sequence", "lease_owner")}),
        ("Times", {"fields": ("created_at", "dispatched_at", "started_at", "finished_at", "duration", "updated_at")}),
    )
    readonly_fields = (
        "task_id",
        "kind",
        "model_id_link",
        "coloured_status",
        "detail",
        "attempts",
        "requested_by",
        "timeline",
        "outcome",
        "audit",
        "config_json",
        "sequence",
        "lease_owner",
        "created_at",
        "dispatched_at",
        "started_at",
        "finished_at",
        "duration",
        "updated_at",
    )

    # History is read-only (ReadOnlyAdminMixin); the actions below have their own permissions, as in
    # the API: retry creates a task (add), cancel changes one (change).
    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"deployments.add_{self.opts.model_name}")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"deployments.change_{self.opts.model_name}")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Exact matches only: both are index seeks, where icontains would scan every row. Every model id
        # is also a valid task id, so a term that is not one names nothing.
        term = search_term.strip()
        if not term:
            return queryset, False
        if not is_valid_task_id(term):
            return queryset.none(), False
        # A term that names a task shows it; otherwise it is a model id. Two seeks, where one OR of the
        # two made SQLite walk the created_at index past a million rows (0.7 s).
        task = queryset.filter(pk=term)
        if task.exists():
            return task, False
        return queryset.filter(embedding_model_id=term), False

    # -- columns

    @admin.display(description="task", ordering="id")
    def short_id(self, task: Task) -> SafeString:
        return format_html('<code title="{}">{}</code>', task.pk, str(task.pk)[:8])

    @admin.display(description="status", ordering="status")
    def coloured_status(self, task: Task) -> SafeString:
        return status_badge(task.status)

    @admin.display(description="model", ordering="embedding_model_id")
    def model_id_link(self, task: Task) -> SafeString:
        return model_link(task.embedding_model_id)

    @admin.display(description="created", ordering="created_at")
    def created(self, task: Task) -> SafeString:
        return time_ago(task.created_at)

    @admin.display(description="duration")
    def duration(self, task: Task) -> str:
        return task_duration(task)

    @admin.display(description="detail")
    def short_detail(self, task: Task) -> str:
        return task.detail if len(task.detail) <= 90 else f"{task.detail[:89]}…"

    # -- detail page

    @admin.display(description="task id")
    def task_id(self, task: Task) -> SafeString:
        return format_html("<code>{}</code>", task.pk)

    @admin.display(description="kind")
    def kind(self, task: Task) -> str:
        return task.get_kind_display()

    @admin.display(description="attempt")
    def attempts(self, task: Task) -> SafeString:
        parts = [format_html("attempt {}", task.attempt)]
        if task.retry_of_id:
            parts.append(format_html("retry of {}", task_link(task.kind, task.retry_of_id)))
        retries = list(task.retries.order_by("attempt").values_list("pk", flat=True))
        if retries:
            links = format_html_join(", ", "{}", ((task_link(task.kind, pk),) for pk in retries))
            parts.append(format_html("retried as {}", links))
        return format_html_join(" · ", "{}", ((part,) for part in parts))

    @admin.display(description="stages")
    def timeline(self, task: Task) -> str:
        return render_to_string("admin/deployments/task_timeline.html", {"rows": timeline_rows(task), "task": task})

    @admin.display(description="metadata")
    def outcome(self, task: Task) -> str:
        return render_to_string("admin/deployments/task_metadata.html", metadata_context(task.metadata))

    @admin.display(description="who did what")
    def audit(self, task: Task) -> str:
        entries = selectors.audit_entries(task_id=task.pk)
        return audit_trail(entries, audit_list_url(object_id=task.pk, object_kind=task.kind))

    @admin.display(description="config")
    def config_json(self, task: Task) -> SafeString:
        return pretty_json(task.config) if task.config else mark_safe("<span class='quiet'>none (defaults)</span>")

    # -- actions

    @admin.action(description="Retry selected failed, refused or canceled tasks", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = self._selected(request, queryset)
        if tasks is None:
            return
        outcome = retry_many(tasks, requested_by=admin_actor(request))
        self._report(request, outcome, "Retried", "Not retried", retried_as)
        if noted := [verdict for verdict in outcome.acted if verdict.note]:
            items = [f"{retried_as(verdict)} ({verdict.note})" for verdict in noted]
            self.message_user(request, summarize(f"{len(items)} new attempt(s) wait", items), messages.WARNING)

    @admin.action(description="Cancel selected pending tasks", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = self._selected(request, queryset)
        if tasks is None:
            return
        outcome = cancel_many(tasks, by=admin_actor(request))
        self._report(request, outcome, "Canceled", "Not canceled", lambda v: short(v.task))

    def _selected(self, request: HttpRequest, queryset: QuerySet) -> list[Task] | None:
        tasks = list(queryset.order_by("created_at")[: MAX_ACTION_TASKS + 1])
        if len(tasks) > MAX_ACTION_TASKS:
            self.message_user(
                request,
                f"Nothing was done: more than {MAX_ACTION_TASKS} tasks are selected. Narrow the filter first.",
                messages.ERROR,
            )
            return None
        return tasks

    def _report(self, request: HttpRequest, outcome: BulkOutcome, did: str, did_not: str, describe: Any) -> None:
        if outcome.acted:
            items = [describe(verdict) for verdict in outcome.acted]
            self.message_user(request, summarize(f"{did} {len(items)} task(s)", items), messages.SUCCESS)
        if outcome.skipped:
            items = [f"{short(verdict.task)} ({verdict.reason})" for verdict in outcome.skipped]
            self.message_user(request, summarize(f"{did_not} {len(items)} task(s)", items), messages.WARNING)


def admin_actor(request: HttpRequest) -> Actor:
    """The staff user acting on an admin page, as the audit trail names them."""
    return actor_from_request(request, AuditEntry.Via.ADMIN)


def retried_as(verdict: TaskVerdict) -> str:
    return f"{short(verdict.task)} → {str(verdict.result.pk)[:8]} (attempt {verdict.result.attempt})"


@admin.register(DeploymentTask)
class DeploymentTaskAdmin(TaskAdmin):
    pass


@admin.register(DeletionTask)
class DeletionTaskAdmin(TaskAdmin):
    pass
