"""The read-only task history: one list per kind (the proxies), each task's timeline and outcome,
and retry / cancel actions that go through the same services as the API.

Both lists read the one task table; the "kind" filter switches between them and keeps the other
filters. History itself is never edited: retry creates a new attempt, cancel finishes a pending task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors, services
from deployments.admin.confirm import ObjectAction, ObjectActionsMixin, confirmation_page, confirmed
from deployments.admin.display import (
    audit_list_url,
    audit_trail,
    metadata_context,
    model_link,
    pretty_json,
    short,
    status_badge,
    summarize,
    task_admin_url,
    task_duration,
    task_link,
    time_ago,
    timeline_rows,
)
from deployments.admin.filters import CappedCountPaginator, CreatedFilter, KindFilter, ModelFilter
from deployments.admin.forms import TaskConfigForm
from deployments.models import AuditEntry, DeletionTask, DeploymentTask, Task, TaskKind, TaskStatus
from deployments.services.audit import Actor, actor_from_request
from deployments.services.bulk import BulkOutcome, TaskVerdict, cancel_many, retry_many
from deployments.task_ids import is_valid_task_id, short_id
from deployments.text import cut_between_words

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


class TaskAdmin(ObjectActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only history of one kind of task. Retry and cancel are actions: they create or finish
    tasks through the services, history itself is never edited."""

    list_display = ("short_id", "coloured_status", "model_id_link", "created", "duration", "attempt", "short_detail")
    list_display_links = ("short_id",)
    list_filter = (KindFilter, "status", ModelFilter, CreatedFilter)
    search_fields = ("id", "embedding_model_id")  # matched by selectors.search_tasks in get_search_results
    search_help_text = "The start of a task id (the 8 characters shown, e.g. 3357e86d) or part of a model id."
    ordering = ("-created_at",)
    list_per_page = 100
    paginator = CappedCountPaginator
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per filter choice
    actions = ["retry_selected", "cancel_selected"]
    change_form_template = "admin/deployments/change_form_with_actions.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_id",
                    "kind",
                    "model_id_link",
                    "coloured_status",
                    "current_detail",
                    "attempts",
                    "requested_by",
                )
            },
        ),
        ("Timeline", {"fields": ("timeline",)}),
        ("Outcome", {"fields": ("outcome",)}),
        ("Audit", {"fields": ("audit",)}),
        ("Request", {"fields": ("config_json", "sequence", "lease_owner")}),
        ("Times", {"fields": ("created_at", "dispatched_at", "started_at", "finished_at", "duration", "updated_at")}),
    )
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])  # all of them

    # History is read-only (ReadOnlyAdminMixin); the actions below have their own permissions, as in
    # the API: retry creates a task (add), cancel changes one (change).
    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"deployments.add_{self.opts.model_name}")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"deployments.change_{self.opts.model_name}")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Index-friendly only (selectors.search_tasks): a term that names tasks by their id's start shows
        # them; otherwise it is part of a model id. Two narrow queries, where one OR of the two made SQLite
        # walk the created_at index past a million rows (0.7 s). The start of a task id is a valid task id
        # too, so a term that is not one names nothing.
        term = search_term.strip()
        if not term:
            return queryset, False
        if not is_valid_task_id(term):
            return queryset.none(), False
        by_id = selectors.search_tasks(queryset, task_id_prefix=term)
        if by_id.exists():
            return by_id, False
        return selectors.search_tasks(queryset, model_id_part=term), False

    # -- the task's own page: Retry and Cancel beside History and Close

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("<path:object_id>/retry/", self.admin_site.admin_view(self.retry_view), name=f"{name}_retry"),
            path("<path:object_id>/cancel/", self.admin_site.admin_view(self.cancel_view), name=f"{name}_cancel"),
        ]
        return own + super().get_urls()  # before the catch-all "<path:object_id>/" of the change page

    def object_actions(self, request: HttpRequest, task: Task) -> list[ObjectAction]:
        """What the task's status allows, and the operator's permissions: a retry of a task that finished
        without delivering (once), a cancel of one that has not started."""
        actions = []
        if self.has_retry_permission(request) and self._retry_refusal(task) is None:
            help_text = "Run it again as a new attempt; its config can be changed first."
            actions.append(ObjectAction("Retry", self._own_url(task, "retry"), help_text))
        if self.has_cancel_permission(request) and task.status == TaskStatus.PENDING:
            actions.append(ObjectAction("Cancel", self._own_url(task, "cancel"), "Finish it before it starts."))
        return actions

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_retry_permission(request):
            raise PermissionDenied
        task = self.get_object(request, unquote(object_id))
        if task is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if refusal := self._retry_refusal(task):
            return self._refused(request, task, f"Not retried: {refusal}")
        form = TaskConfigForm(task.kind, request.POST if confirmed(request) else None, initial=task.config)
        if confirmed(request) and form.is_valid():
            try:
                attempt = services.retry_task(task, requested_by=admin_actor(request), config=form.config)
            except services.TaskHandOffFailed as exc:
                attempt = exc.tasks[0]  # made all the same: it stays pending and the sweeper sends it
                self.message_user(request, f"{attempt.pk} waits: {exc}", messages.WARNING)
            except services.RetryRefused as exc:
                return self._refused(request, task, f"Not retried: {exc.reason}")
            except services.TaskError as exc:
                return self._refused(request, task, f"Not retried: {exc}")
            made = task_link(attempt.kind, attempt.pk)
            retried = format_html("Retried {} as {} (attempt {})", short(task), made, attempt.attempt)
            self.message_user(request, retried, messages.SUCCESS)
            return HttpResponseRedirect(task_admin_url(attempt.kind, attempt.pk))
        deploys = task.kind == TaskKind.DEPLOYMENT
        return confirmation_page(
            self,
            request,
            verb="retry",
            object_label=f"{task.kind} {short_id(task.pk)}",
            object_url=task_admin_url(task.kind, task.pk),
            explanation=(
                f"A new attempt (attempt {task.attempt + 1}) of this {task.kind} will be created at the back of "
                f"model {task.embedding_model_id}'s queue; this task stays as it is."
                + (" It takes the config below: change what made it fail, or leave it as it was." if deploys else "")
            ),
            facts=self._facts(task),
            submit_label=f"Yes, retry {task.kind} {short_id(task.pk)}",
            form=form,
            form_title="Config of the new attempt (empty: the server's default)",
        )

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        task = self.get_object(request, unquote(object_id))
        if task is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if task.status != TaskStatus.PENDING:
            return self._refused(request, task, f"Not canceled: only a pending task can be; this one is {task.status}")
        if confirmed(request):
            try:
                services.cancel_task(task, by=admin_actor(request))
            except services.TaskError as exc:  # it started meanwhile
                return self._refused(request, task, f"Not canceled: {exc}")
            self.message_user(request, f"Canceled {short(task)}", messages.SUCCESS)
            return HttpResponseRedirect(task_admin_url(task.kind, task.pk))
        return confirmation_page(
            self,
            request,
            verb="cancel",
            object_label=f"{task.kind} {short_id(task.pk)}",
            object_url=task_admin_url(task.kind, task.pk),
            explanation=f"This {task.kind} will be canceled before it starts; the next task of its model goes ahead.",
            facts=self._facts(task),
            submit_label=f"Yes, cancel {task.kind} {short_id(task.pk)}",
        )

    @staticmethod
    def _retry_refusal(task: Task) -> str | None:
        try:
            services.ensure_retryable(task)
        except services.RetryRefused as exc:
            return exc.reason
        return None

    def _refused(self, request: HttpRequest, task: Task, message: str) -> HttpResponse:
        self.message_user(request, message, messages.ERROR)
        return HttpResponseRedirect(task_admin_url(task.kind, task.pk))

    @staticmethod
    def _facts(task: Task) -> list[tuple[str, Any]]:
        return [
            ("task", task_link(task.kind, task.pk)),
            ("model", model_link(task.embedding_model_id)),
            ("status", status_badge(task.status)),
            ("attempt", task.attempt),
            ("detail", task.detail or "—"),
            ("config", pretty_json(task.config) if task.config else "none (defaults)"),
        ]

    # -- columns

    @admin.display(description="task", ordering="id")
    def short_id(self, task: Task) -> SafeString:
        return format_html('<code title="{}">{}</code>', task.pk, short_id(task.pk))

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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        # Why each pending task waits comes with the page's rows (subqueries), not a query per row.
        return selectors.with_waiting_reason(super().get_queryset(request))

    @admin.display(description="detail")
    def short_detail(self, task: Task) -> str | SafeString:
        detail = selectors.task_detail(task)
        shown = cut_between_words(detail, 90)
        return shown if shown == detail else format_html('<span title="{}">{}</span>', detail, shown)

    @admin.display(description="detail")
    def current_detail(self, task: Task) -> str:
        return selectors.task_detail(task)

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
        selection = self._selected(request, queryset)
        if selection is None:
            return
        outcome = retry_many(selection.tasks, requested_by=admin_actor(request))
        self._report(request, outcome, selection, "Retried", "Not retried", retried_as)
        if noted := [verdict for verdict in outcome.acted if verdict.note]:
            items = [f"{retried_as(verdict)} ({verdict.note})" for verdict in noted]
            self.message_user(request, summarize(f"{len(items)} new attempt(s) wait", items), messages.WARNING)

    @admin.action(description="Cancel selected pending tasks", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        selection = self._selected(request, queryset)
        if selection is None:
            return
        outcome = cancel_many(selection.tasks, by=admin_actor(request))
        self._report(request, outcome, selection, "Canceled", "Not canceled", lambda v: short(v.task))

    def _selected(self, request: HttpRequest, queryset: QuerySet) -> Selection | None:
        """The tasks the operator ticked, read again by id. Django hands an action the list's filtered
        queryset narrowed to the ticked ids, so a task whose status changed since the page was drawn
        (a pending one that started) would drop out of a status filter without a word; read by id, it
        is acted on or named with the reason it was not. "Select all matching" means the filter's rows."""
        if request.POST.get("select_across") == "1":
            tasks = list(queryset.order_by("created_at")[: MAX_ACTION_TASKS + 1])
            selection = Selection(tasks, requested=len(tasks))
        else:
            ids = list(dict.fromkeys(request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)))[: MAX_ACTION_TASKS + 1]
            found = {task.pk: task for task in selectors.tasks_by_ids(ids) if task.kind == self.model.KIND}
            tasks = sorted(found.values(), key=lambda task: task.created_at)
            selection = Selection(tasks, requested=len(ids), missing=[pk for pk in ids if pk not in found])
        if selection.requested > MAX_ACTION_TASKS:
            self.message_user(
                request,
                f"Nothing was done: more than {MAX_ACTION_TASKS} tasks are selected. Narrow the filter first.",
                messages.ERROR,
            )
            return None
        return selection

    def _report(
        self, request: HttpRequest, outcome: BulkOutcome, selection: Selection, did: str, did_not: str, describe: Any
    ) -> None:
        # Every selected task is named once: acted on, skipped with its reason, or gone.
        of = f" of {selection.requested} selected" if selection.requested != len(outcome.acted) else ""
        if outcome.acted:
            items = [describe(verdict) for verdict in outcome.acted]
            self.message_user(request, summarize(f"{did} {len(items)}{of} task(s)", items), messages.SUCCESS)
        if outcome.skipped:
            items = [f"{short(verdict.task)} ({verdict.reason})" for verdict in outcome.skipped]
            self.message_user(request, summarize(f"{did_not} {len(items)}{of} task(s)", items), messages.WARNING)
        if selection.missing:
            items = [f"{short_id(pk)} (no such {self.model.KIND} task any more)" for pk in selection.missing]
            self.message_user(request, summarize(f"{did_not} {len(items)}{of} task(s)", items), messages.WARNING)


@dataclass(frozen=True)
class Selection:
    """The tasks an action acts on, how many the operator selected, and the selected ids no task has now."""

    tasks: list[Task]
    requested: int
    missing: list[str] = field(default_factory=list)


def admin_actor(request: HttpRequest) -> Actor:
    """The staff user acting on an admin page, as the audit trail names them."""
    return actor_from_request(request, AuditEntry.Via.ADMIN)


def retried_as(verdict: TaskVerdict) -> str:
    return f"{short(verdict.task)} → {short_id(verdict.result.pk)} (attempt {verdict.result.attempt})"


@admin.register(DeploymentTask)
class DeploymentTaskAdmin(TaskAdmin):
    pass


@admin.register(DeletionTask)
class DeletionTaskAdmin(TaskAdmin):
    pass
