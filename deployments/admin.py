"""The operators' control room: the model registry with deploy / delete actions, the read-only task
history with retry / cancel actions, and each task's stage timeline. The dashboard on the admin
index comes from ``templates/admin/index.html`` and the ``control_room`` template tags.

Thin, like the API: every action calls the same services the API calls (deployments.services),
every list reads through deployments.selectors.

Deployment and deletion tasks are separate tables, so they get two changelists with the same
filters; the "kind" filter switches between them and keeps the other filters. A union of the two
tables would need a sort over both on every page (too slow with a million rows), and an operator
asks "which deploys failed?" far more often than "which tasks of any kind failed?".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors, services
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, ModelLease, Task, TaskStatus
from deployments.services.bulk import BulkOutcome, TaskVerdict, cancel_many, retry_many

# The history's columns need the page's width more than a second copy of the index's app list does.
admin.site.enable_nav_sidebar = False

# A bulk action over more tasks than this is refused whole: narrow the filter first.
MAX_ACTION_TASKS = 1000
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


def badge(label: str, colour: str) -> SafeString:
    return format_html('<span class="cr-badge" style="background:{}">{}</span>', colour, label)


def status_badge(status: str) -> SafeString:
    label = TaskStatus(status).label if status in TaskStatus.values else status
    return badge(label, STATUS_COLOURS.get(status, "#444"))


def task_admin_url(task_model: type[Task], task_id: uuid.UUID | str) -> str:
    return reverse(f"admin:deployments_{task_model._meta.model_name}_change", args=[task_id])


def task_link(task_model: type[Task], task_id: uuid.UUID | str) -> SafeString:
    url = task_admin_url(task_model, task_id)
    return format_html('<a href="{}" title="{}"><code>{}</code></a>', url, task_id, str(task_id)[:8])


def model_link(embedding_model_id: str) -> SafeString:
    url = reverse("admin:deployments_embeddingmodel_change", args=[embedding_model_id])
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


# -- Lists of a million rows ------------------------------------------------------------------


class CappedCountPaginator(Paginator):
    """Counts at most ``cap`` + 1 rows (``SELECT COUNT(*) FROM (... LIMIT cap + 1)``), never the whole table.

    With a million tasks a full COUNT(*) costs more than the page itself; beyond the cap the
    changelist says "more than 10,000" and offers the first cap / per_page pages (filter to go deeper).
    """

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class KindFilter(admin.ListFilter):
    """Switches between the deployment and the deletion history, keeping the other filters."""

    title = "kind"
    template = "admin/filter.html"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: type[Task], model_admin: Any):
        super().__init__(request, params, model, model_admin)
        self.model = model
        kept = request.GET.copy()
        kept.pop("p", None)  # the page number belongs to the list we leave
        self.kept_query = kept.urlencode()

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return []

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        for task_model in selectors.TASK_MODELS.values():
            url = reverse(f"admin:deployments_{task_model._meta.model_name}_changelist")
            yield {
                "selected": task_model is self.model,
                "query_string": f"{url}?{self.kept_query}" if self.kept_query else url,
                "display": task_model.KIND.capitalize(),
            }


class ModelFilter(admin.SimpleListFilter):
    """The registered models (a small table), not DISTINCT over a million task rows.

    Listed while there are few; past ``max_listed`` the sidebar would be a wall of links, so the
    list is hidden and the search box (exact model id) does the job. ``?model=`` works either way.
    """

    title = "model"
    parameter_name = "model"
    max_listed = 40

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        model_ids = selectors.embedding_model_ids(limit=self.max_listed + 1)
        return [] if len(model_ids) > self.max_listed else [(model_id, model_id) for model_id in model_ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(embedding_model_id=self.value()) if self.value() else queryset


class CreatedFilter(admin.SimpleListFilter):
    """Cheap date ranges on the created_at index (date_hierarchy would scan for distinct dates)."""

    title = "created"
    parameter_name = "created"
    RANGES = {
        "1h": ("Last hour", timedelta(hours=1)),
        "24h": ("Last 24 hours", timedelta(hours=24)),
        "7d": ("Last 7 days", timedelta(days=7)),
        "30d": ("Last 30 days", timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.RANGES.items()] + [("older", "Older than 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in self.RANGES:
            return queryset.filter(created_at__gte=timezone.now() - self.RANGES[value][1])
        if value == "older":
            return queryset.filter(created_at__lt=timezone.now() - timedelta(days=30))
        return queryset


# -- Task history -----------------------------------------------------------------------------


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
    search_help_text = "A task id (UUID), or an exact embedding model id."
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
        # Exact matches only: both are index seeks, where icontains would scan every row.
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
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

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, task: Task) -> str:
        return timezone.localtime(task.created_at).strftime("%Y-%m-%d %H:%M:%S")

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
        return task.KIND

    @admin.display(description="attempt")
    def attempts(self, task: Task) -> SafeString:
        parts = [format_html("attempt {}", task.attempt)]
        if task.retry_of_id:
            parts.append(format_html("retry of {}", task_link(type(task), task.retry_of_id)))
        retries = list(task.retries.order_by("attempt").values_list("pk", flat=True))
        if retries:
            links = format_html_join(", ", "{}", ((task_link(type(task), pk),) for pk in retries))
            parts.append(format_html("retried as {}", links))
        return format_html_join(" · ", "{}", ((part,) for part in parts))

    @admin.display(description="stages")
    def timeline(self, task: Task) -> str:
        return render_to_string("admin/deployments/task_timeline.html", {"rows": timeline_rows(task), "task": task})

    @admin.display(description="metadata")
    def outcome(self, task: Task) -> str:
        return render_to_string("admin/deployments/task_metadata.html", metadata_context(task.metadata))

    @admin.display(description="config")
    def config_json(self, task: Task) -> SafeString:
        return pretty_json(task.config) if task.config else mark_safe("<span class='quiet'>none (defaults)</span>")

    # -- actions

    @admin.action(description="Retry selected failed, refused or canceled tasks", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = self._selected(request, queryset)
        if tasks is None:
            return
        outcome = retry_many(tasks, requested_by=request.user.get_username())
        self._report(request, outcome, "Retried", "Not retried", retried_as)

    @admin.action(description="Cancel selected pending tasks", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = self._selected(request, queryset)
        if tasks is None:
            return
        outcome = cancel_many(tasks)
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


EVENT_STATE_COLOURS = {"done": "#15803d", "failed": "#b91c1c", "started": "#2563eb"}


def timeline_rows(task: Task) -> list[dict[str, Any]]:
    """One row per stage: when it started, how it ended, how long it took, and what it said.

    The engine records a stage's start and its end as two events; an operator reads them as one
    step, so they are folded together (a stage that never ended shows as still started).
    """
    start = task.started_at or task.created_at
    rows: list[dict[str, Any]] = []
    for event in selectors.task_events(task):
        row = rows[-1] if rows and rows[-1]["stage"] == event.stage and rows[-1]["state"] == "started" else None
        if row is None:
            row = {"stage": event.stage, "at": event.created_at, "messages": []}
            row["offset"] = human_duration(max(0.0, (event.created_at - start).total_seconds()))
            rows.append(row)
        row["state"] = event.state
        row["colour"] = EVENT_STATE_COLOURS.get(event.state, "#6b7280")
        row["took"] = human_duration(event.duration_s) if event.duration_s is not None else ""
        if event.message and event.message not in row["messages"]:
            row["messages"].append(event.message)
    return rows


def short(task: Task) -> str:
    return f"{task.embedding_model_id} {str(task.pk)[:8]}"


def retried_as(verdict: TaskVerdict) -> str:
    return f"{short(verdict.task)} → {str(verdict.result.pk)[:8]} (attempt {verdict.result.attempt})"


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="cr-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, default=str))


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


@admin.register(DeploymentTask)
class DeploymentTaskAdmin(TaskAdmin):
    pass


@admin.register(DeletionTask)
class DeletionTaskAdmin(TaskAdmin):
    pass


# -- The model registry -----------------------------------------------------------------------


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "coloured_state",
        "short_revision",
        "endpoint",
        "dimensions",
        "latest_deployment",
        "latest_deletion",
        "updated_at",
    )
    list_filter = ("state",)
    search_fields = ("id", "name")
    readonly_fields = ("state", "live_revision", "endpoint", "created_at", "updated_at")
    actions = ["deploy_selected", "delete_selected_deployments"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[EmbeddingModel]:
        # The latest task of each kind comes with the page's rows, not one query per row.
        return selectors.with_latest_tasks(super().get_queryset(request))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # "Delete" here means deleting the deployment from the server; unregistering a model is
        # the detail page's delete button, and only once it is not deployed.
        actions.pop("delete_selected", None)
        return actions

    def has_deploy_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("deployments.add_deploymenttask")

    def has_undeploy_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("deployments.add_deletiontask")

    def has_delete_permission(self, request: HttpRequest, obj: EmbeddingModel | None = None) -> bool:
        if obj is not None and (obj.state != EmbeddingModel.State.NOT_DEPLOYED or obj.live_revision):
            return False  # a deployed model is deleted from the server first
        return super().has_delete_permission(request, obj)

    # Writes go through the registry service, as the API's do.
    def save_model(self, request: HttpRequest, obj: EmbeddingModel, form: Any, change: bool) -> None:
        if change:
            services.update_model(obj, name=obj.name, source=obj.source, dimensions=obj.dimensions)
        else:
            services.register_model(obj.id, obj.source, name=obj.name, dimensions=obj.dimensions)

    def delete_model(self, request: HttpRequest, obj: EmbeddingModel) -> None:
        services.unregister_model(obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.TaskError as exc:
            self.message_user(request, f"Not unregistered: {exc}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:deployments_embeddingmodel_change", args=[object_id]))

    # -- columns

    @admin.display(description="state", ordering="state")
    def coloured_state(self, model: EmbeddingModel) -> SafeString:
        return badge(model.get_state_display(), STATE_COLOURS.get(model.state, "#444"))

    @admin.display(description="live revision", ordering="live_revision")
    def short_revision(self, model: EmbeddingModel) -> SafeString:
        if not model.live_revision:
            return mark_safe("—")
        return format_html('<code title="{}">{}</code>', model.live_revision, model.live_revision[:12])

    @admin.display(description="latest deployment")
    def latest_deployment(self, model: EmbeddingModel) -> SafeString:
        return self._latest(DeploymentTask, model.latest_deployment_id, model.latest_deployment_status)

    @admin.display(description="latest deletion")
    def latest_deletion(self, model: EmbeddingModel) -> SafeString:
        return self._latest(DeletionTask, model.latest_deletion_id, model.latest_deletion_status)

    @staticmethod
    def _latest(task_model: type[Task], task_id: uuid.UUID | None, status: str | None) -> SafeString:
        if task_id is None:
            return mark_safe("—")
        return format_html("{} {}", status_badge(status or ""), task_link(task_model, task_id))

    # -- actions

    @admin.action(description="Deploy selected models", permissions=["deploy"])
    def deploy_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_submit(request, queryset, DeploymentTask, services.submit_deployment, "deploy")

    @admin.action(description="Delete selected models from the inference server", permissions=["undeploy"])
    def delete_selected_deployments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_submit(request, queryset, DeletionTask, services.submit_deletion, "delete")

    def _confirm_then_submit(
        self, request: HttpRequest, queryset: QuerySet, task_model: type[Task], submit: Any, verb: str
    ) -> HttpResponse | None:
        models = list(queryset.order_by("pk"))
        if request.POST.get("post") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{verb.capitalize()} {len(models)} model(s)"
                + (" from the inference server?" if verb == "delete" else "?"),
                "opts": self.opts,
                "models": models,
                "verb": verb,
                "action": request.POST.get("action"),
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "task_kind": task_model.KIND,
            }
            return TemplateResponse(request, "admin/deployments/embeddingmodel/confirm_tasks.html", context)
        created: list[str] = []
        failed: list[str] = []
        for model in models:
            # Exactly what POST /deploy and POST /delete do: one service call per model, on commit to the queue.
            try:
                submission = submit(model.id, config={}, requested_by=request.user.get_username())
                created.append(f"{model.id} (task {str(submission.task.pk)[:8]})")
            except services.TaskError as exc:
                failed.append(f"{model.id} ({exc})")
        history = reverse(f"admin:deployments_{task_model._meta.model_name}_changelist")
        if created:
            message = summarize(f"Created {len(created)} {task_model.KIND} task(s)", created)
            self.message_user(request, format_html('{} — <a href="{}">follow them</a>', message, history))
        if failed:
            self.message_user(request, summarize(f"No {task_model.KIND} task for", failed), messages.ERROR)
        return None


@admin.register(ModelLease)
class ModelLeaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The engine's per-model leases, to look at: editing one by hand would break its guarantees."""

    list_display = ("embedding_model_id", "owner", "task_kind", "task_id", "expires_at", "next_sequence")
    readonly_fields = list_display
