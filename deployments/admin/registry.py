"""The model registry: each model with what is live and its latest tasks, and deploy / delete
actions that create tasks exactly as POST /deploy and POST /delete do."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors, services
from deployments.admin.display import (
    DRIFT_COLOUR,
    STATE_COLOURS,
    audit_list_url,
    audit_trail,
    badge,
    status_badge,
    summarize,
    task_link,
    task_list_url,
    time_ago,
)
from deployments.admin.history import admin_actor
from deployments.models import Drift, EmbeddingModel, TaskKind


class DriftInline(admin.TabularInline):
    """The model's drifts, newest first: when the server stopped serving what is live, and what was done."""

    model = Drift
    fields = ("detected_at", "resolved_at", "registered_revision", "served_revision", "detail", "action")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-detected_at",)


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
        "drift_badge",
        "updated_at",
    )
    list_filter = ("state",)
    search_fields = ("id", "name")
    fields = ("id", "name", "source", "dimensions", "state", "live_revision", "endpoint", "created_at", "updated_at")
    readonly_fields = ("state", "live_revision", "deployed_from", "endpoint", "created_at", "updated_at", "audit")
    actions = ["deploy_selected", "delete_selected_deployments"]

    def get_inlines(self, request: HttpRequest, obj: EmbeddingModel | None) -> list[type[admin.TabularInline]]:
        return [DriftInline] if obj is not None else []  # a model being registered has no drift yet

    def get_queryset(self, request: HttpRequest) -> QuerySet[EmbeddingModel]:
        # The latest task of each kind comes with the page's rows, not one query per row.
        return selectors.with_open_drift(selectors.with_latest_tasks(super().get_queryset(request)))

    def get_fields(self, request: HttpRequest, obj: EmbeddingModel | None = None) -> tuple[str, ...]:
        # A model being registered has no deploy and no trail yet.
        return self.fields if obj is None else (*self.fields, "deployed_from", "audit")

    def get_readonly_fields(self, request: HttpRequest, obj: EmbeddingModel | None = None) -> tuple[str, ...]:
        readonly = tuple(super().get_readonly_fields(request, obj))
        # The id names the model on the server and its repository folder: chosen once, when it is added.
        return readonly if obj is None else ("id", *readonly)

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
        by = admin_actor(request)
        if change:
            services.update_model(obj, by=by, name=obj.name, source=obj.source, dimensions=obj.dimensions)
        else:
            services.register_model(obj.id, obj.source, name=obj.name, dimensions=obj.dimensions, by=by)

    def delete_model(self, request: HttpRequest, obj: EmbeddingModel) -> None:
        services.unregister_model(obj, by=admin_actor(request))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.TaskError as exc:
            self.message_user(request, f"Not unregistered: {exc}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:deployments_embeddingmodel_change", args=[object_id]))

    # -- columns

    @admin.display(description="who did what")
    @admin.display(description="live revision deployed from")
    def deployed_from(self, model: EmbeddingModel) -> SafeString:
        # What the source resolved to when the live revision was fetched (a branch or alias may have moved since).
        task = selectors.live_deployment(model)
        source = (task.metadata.get("source") or {}) if task else {}
        if not source:
            return mark_safe("—")
        details = ", ".join(f"{key} {value}" for key, value in source.items() if key != "uri")
        return format_html(
            "<code>{}</code>{}{} (task {})",
            source.get("uri", ""),
            " — " if details else "",
            details,
            task_link(task.kind, task.pk),
        )

    def audit(self, model: EmbeddingModel) -> str:
        # The model's registry entries and those of its tasks.
        entries = selectors.audit_entries(embedding_model_id=model.pk)
        return audit_trail(entries, audit_list_url(embedding_model_id=model.pk))

    @admin.display(description="state", ordering="state")
    def coloured_state(self, model: EmbeddingModel) -> SafeString:
        return badge(model.get_state_display(), STATE_COLOURS.get(model.state, "#444"))

    @admin.display(description="live revision", ordering="live_revision")
    def short_revision(self, model: EmbeddingModel) -> SafeString:
        if not model.live_revision:
            return mark_safe("—")
        return format_html('<code title="{}">{}</code>', model.live_revision, model.live_revision[:12])

    @admin.display(description="drift")
    def drift_badge(self, model: EmbeddingModel) -> SafeString:
        drifts = getattr(model, "open_drifts", [])
        if not drifts:
            return mark_safe("—")
        drift = drifts[0]
        since = time_ago(drift.detected_at)
        return format_html('{} <span title="{}">since {}</span>', badge("drift", DRIFT_COLOUR), drift.detail, since)

    @admin.display(description="latest deployment")
    def latest_deployment(self, model: EmbeddingModel) -> SafeString:
        return self._latest(TaskKind.DEPLOYMENT, model.latest_deployment_id, model.latest_deployment_status)

    @admin.display(description="latest deletion")
    def latest_deletion(self, model: EmbeddingModel) -> SafeString:
        return self._latest(TaskKind.DELETION, model.latest_deletion_id, model.latest_deletion_status)

    @staticmethod
    def _latest(kind: str, task_id: str | None, status: str | None) -> SafeString:
        if task_id is None:
            return mark_safe("—")
        return format_html("{} {}", status_badge(status or ""), task_link(kind, task_id))

    # -- actions

    @admin.action(description="Deploy selected models", permissions=["deploy"])
    def deploy_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_submit(request, queryset, TaskKind.DEPLOYMENT, services.submit_deployment, "deploy")

    @admin.action(description="Delete selected models from the inference server", permissions=["undeploy"])
    def delete_selected_deployments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_submit(request, queryset, TaskKind.DELETION, services.submit_deletion, "delete")

    def _confirm_then_submit(
        self, request: HttpRequest, queryset: QuerySet, kind: str, submit: Any, verb: str
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
                "task_kind": kind,
            }
            return TemplateResponse(request, "admin/deployments/embeddingmodel/confirm_tasks.html", context)
        created: list[str] = []
        waiting: list[services.TaskHandOffFailed] = []
        failed: list[str] = []
        for model in models:
            # Exactly what POST /deploy and POST /delete do: one service call per model, on commit to the queue.
            try:
                submission = submit(model.id, config={}, requested_by=admin_actor(request))
                created.append(f"{model.id} (task {str(submission.task.pk)[:8]})")
            except services.TaskHandOffFailed as exc:
                # Created all the same: it stays pending and the sweeper sends it.
                created.append(f"{model.id} (task {exc.task_ids[0][:8]})")
                waiting.append(exc)
            except services.TaskError as exc:
                failed.append(f"{model.id} ({exc})")
        history = task_list_url(kind)
        if created:
            message = summarize(f"Created {len(created)} {kind} task(s)", created)
            self.message_user(request, format_html('{} — <a href="{}">follow them</a>', message, history))
        if waiting:
            prefix = (
                f"The task queue refused {len(waiting)} of them; they stay pending and the sweeper sends them "
                f"once they have waited {waiting[0].retry_after} s"
            )
            refused = [exc.tasks[0].embedding_model_id for exc in waiting]
            self.message_user(request, summarize(prefix, refused), messages.WARNING)
        if failed:
            self.message_user(request, summarize(f"No {kind} task for", failed), messages.ERROR)
        return None
