"""The model registry: each model with what is live and its latest tasks, and deploy / delete
actions that create tasks exactly as POST /deploy and POST /delete do."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from deployments import selectors, services
from deployments.admin.confirm import ObjectAction, ObjectActionsMixin, confirmation_page, confirmed
from deployments.admin.display import (
    DRIFT_COLOUR,
    STATE_COLOURS,
    audit_list_url,
    audit_trail,
    badge,
    revision_code,
    status_badge,
    summarize,
    task_admin_url,
    task_duration,
    task_link,
    task_list_url,
)
from deployments.admin.forms import TaskConfigForm
from deployments.admin.history import admin_actor
from deployments.clock import format_time, relative_time
from deployments.inference.mlflow_source import mlflow_ui_url
from deployments.models import Drift, EmbeddingModel, TaskKind
from deployments.task_ids import short_id

# A model's page lists this many of its latest tasks, then links to the task lists filtered to it.
TASKS_SHOWN = 10


class DriftInline(admin.TabularInline):
    """The model's drifts, newest first: when the server stopped serving what is live, and what was done."""

    model = Drift
    fields = ("detected_at", "resolved_at", "registered", "served", "detail", "action")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-detected_at",)

    @admin.display(description="registered revision")
    def registered(self, drift: Drift) -> SafeString:
        return revision_code(drift.registered_revision)

    @admin.display(description="served revision")
    def served(self, drift: Drift) -> SafeString:
        return revision_code(drift.served_revision, empty="nothing")


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(ObjectActionsMixin, admin.ModelAdmin):
    # Fits 1400 px beside the filter: the name under the id (when it says more), the endpoint cut to the
    # column with the whole URL in its tooltip, both latest tasks in one column, the drift's detail and
    # since when in its badge's tooltip. When it changed is on the model's page.
    list_display = ("id_and_name", "coloured_state", "revision", "short_endpoint", "dim", "latest_tasks", "drift_badge")
    list_display_links = ("id_and_name",)
    list_filter = ("state",)
    search_fields = ("id", "name")  # icontains: the registry is small
    search_help_text = "Part of a model id or name."
    fields = (
        "id",
        "name",
        "source",
        "mlflow_tracking_uri",
        "dimensions",
        "state",
        "revision",
        "endpoint",
        "created_at",
        "updated_at",
    )
    readonly_fields = ("state", "revision", "deployed_from", "endpoint", "created_at", "updated_at", "tasks", "audit")
    actions = ["deploy_selected", "delete_selected_deployments"]
    change_form_template = "admin/deployments/change_form_with_actions.html"

    def get_inlines(self, request: HttpRequest, obj: EmbeddingModel | None) -> list[type[admin.TabularInline]]:
        return [DriftInline] if obj is not None else []  # a model being registered has no drift yet

    def get_queryset(self, request: HttpRequest) -> QuerySet[EmbeddingModel]:
        # The latest task of each kind comes with the page's rows, not one query per row.
        return selectors.with_open_drift(selectors.with_latest_tasks(super().get_queryset(request)))

    def get_fields(self, request: HttpRequest, obj: EmbeddingModel | None = None) -> tuple[str, ...]:
        # A model being registered has no deploy and no trail yet.
        return self.fields if obj is None else (*self.fields, "deployed_from", "tasks", "audit")

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
            services.update_model(
                obj,
                by=by,
                name=obj.name,
                source=obj.source,
                dimensions=obj.dimensions,
                mlflow_tracking_uri=obj.mlflow_tracking_uri,
            )
        else:
            services.register_model(
                obj.id,
                obj.source,
                name=obj.name,
                dimensions=obj.dimensions,
                mlflow_tracking_uri=obj.mlflow_tracking_uri,
                by=by,
            )

    def delete_model(self, request: HttpRequest, obj: EmbeddingModel) -> None:
        services.unregister_model(obj, by=admin_actor(request))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.TaskError as exc:
            self.message_user(request, f"Not unregistered: {exc}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:deployments_embeddingmodel_change", args=[object_id]))

    # -- the model's own page: Deploy and Delete beside History

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("<path:object_id>/deploy/", self.admin_site.admin_view(self.deploy_view), name=f"{name}_deploy"),
            path(
                "<path:object_id>/delete-deployment/",
                self.admin_site.admin_view(self.delete_deployment_view),
                name=f"{name}_delete_deployment",
            ),
        ]
        return own + super().get_urls()  # before the catch-all "<path:object_id>/" of the change page

    def object_actions(self, request: HttpRequest, model: EmbeddingModel) -> list[ObjectAction]:
        actions = []
        if self.has_deploy_permission(request):
            help_text = "Deploy a new revision from the source (green: proven before it takes traffic)."
            actions.append(ObjectAction("Deploy", self._own_url(model, "deploy"), help_text))
        if self.has_undeploy_permission(request) and self._is_on_the_server(model):
            help_text = "Unload it from the inference server and remove its revisions; it stays registered."
            actions.append(ObjectAction("Delete from server", self._own_url(model, "delete_deployment"), help_text))
        return actions

    def deploy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_deploy_permission(request):
            raise PermissionDenied
        return self._submit_view(request, object_id, TaskKind.DEPLOYMENT)

    def delete_deployment_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_undeploy_permission(request):
            raise PermissionDenied
        return self._submit_view(request, object_id, TaskKind.DELETION)

    def _submit_view(self, request: HttpRequest, object_id: str, kind: str) -> HttpResponse:
        model = self.get_object(request, unquote(object_id))
        if model is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        model_url = reverse("admin:deployments_embeddingmodel_change", args=[quote(model.pk)])
        form = TaskConfigForm(kind, request.POST if confirmed(request) else None)
        if confirmed(request) and form.is_valid():
            # Exactly what POST /deploy and POST /delete do: the same service, its audit entry, its lock
            # on the model's queue, its hand-off to the queue once the transaction commits.
            submit = services.submit_deployment if kind == TaskKind.DEPLOYMENT else services.submit_deletion
            try:
                task = submit(model.pk, config=form.config, requested_by=admin_actor(request)).task
            except services.TaskHandOffFailed as exc:
                task = exc.tasks[0]  # created all the same: it stays pending and the sweeper sends it
                self.message_user(request, str(exc), messages.WARNING)
            except services.TaskError as exc:
                self.message_user(request, f"No {kind} task: {exc}", messages.ERROR)
                return HttpResponseRedirect(model_url)
            created = format_html("Created {} task {} for {}", kind, task_link(kind, task.pk), model.pk)
            self.message_user(request, created, messages.SUCCESS)
            return HttpResponseRedirect(task_admin_url(kind, task.pk))
        deploys = kind == TaskKind.DEPLOYMENT
        return confirmation_page(
            self,
            request,
            verb="deploy" if deploys else "delete from the inference server",
            object_label=model.pk,
            object_url=model_url,
            explanation=(
                "A deployment task will load a new revision beside the one serving (green), prove it with a real "
                "inference call, and only then switch the model's name to it; a model that is not deployed yet "
                "takes a slot on the inference server."
                if deploys
                else "A deletion task will unload the model from the inference server and remove its revisions from "
                "the model repository: clients calling it will get errors. The model stays registered."
            ),
            facts=[
                ("model", model.pk),
                ("state", model.get_state_display()),
                ("live revision", revision_code(model.live_revision)),
                ("endpoint", model.endpoint or "—"),
                ("source", model.source),
            ],
            submit_label=f"Yes, {'deploy' if deploys else 'delete'} {model.pk}",
            form=form,
            form_title="Config of this deploy (empty: the server's default)",
        )

    @staticmethod
    def _is_on_the_server(model: EmbeddingModel) -> bool:
        return model.state != EmbeddingModel.State.NOT_DEPLOYED or bool(model.live_revision)

    # -- columns

    @admin.display(description="latest tasks")
    def tasks(self, model: EmbeddingModel) -> str:
        rows = [
            {
                "task": task,
                "link": task_link(task.kind, task.pk),
                "status": status_badge(task.status),
                "duration": task_duration(task),
                "detail": selectors.task_detail(task),
            }
            for task in selectors.recent_tasks_for_model(model.pk, TASKS_SHOWN)
        ]
        all_tasks = [
            (f"{label.lower()} tasks", f"{task_list_url(kind)}?{urlencode({'model': model.pk})}")
            for kind, label in TaskKind.choices
        ]
        return render_to_string("admin/deployments/model_tasks.html", {"rows": rows, "all_tasks": all_tasks})

    @admin.display(description="live revision deployed from")
    def deployed_from(self, model: EmbeddingModel) -> SafeString:
        # What the source resolved to when the live revision was fetched (a branch or alias may have moved since).
        origin = selectors.live_revision_origin(model)
        if origin is None:
            return mark_safe("—")  # nothing is live
        source = origin.source
        last = origin.deployed_by
        # A rollback made a kept revision live again: it fetched nothing, so the fetch is named beside it.
        again = (
            format_html("; deployed again, kept, by task {}", task_link(last.kind, last.pk))
            if last is not None and last != origin.fetched_by
            else ""
        )
        if not source:
            return format_html("not recorded{}", again)
        details = ", ".join(f"{key} {value}" for key, value in source.items() if key not in ("uri", "tracking_uri"))
        ui_url = mlflow_ui_url(source)
        fetched = (
            format_html("task {}", task_link(origin.fetched_by.kind, origin.fetched_by.pk))
            if origin.fetched_by
            else "the revision's PROVENANCE.json"
        )
        return format_html(
            "<code>{}</code>{}{}{} ({}{})",
            source.get("uri", ""),
            " — " if details else "",
            details,
            format_html(' — <a href="{}" rel="noopener">open in MLflow</a>', ui_url) if ui_url else "",
            fetched,
            again,
        )

    @admin.display(description="who did what")
    def audit(self, model: EmbeddingModel) -> str:
        # The model's registry entries and those of its tasks.
        entries = selectors.audit_entries(embedding_model_id=model.pk)
        return audit_trail(entries, audit_list_url(embedding_model_id=model.pk))

    @admin.display(description="state", ordering="state")
    def coloured_state(self, model: EmbeddingModel) -> SafeString:
        return badge(model.get_state_display(), STATE_COLOURS.get(model.state, "#444"))

    @admin.display(description="live revision", ordering="live_revision")
    def revision(self, model: EmbeddingModel) -> SafeString:
        return revision_code(model.live_revision)

    @admin.display(description="model", ordering="id")
    def id_and_name(self, model: EmbeddingModel) -> SafeString:
        if model.name.lower() in ("", model.pk.lower()):
            return format_html("{}", model.pk)
        return format_html('{}<div class="cr-quiet">{}</div>', model.pk, model.name)

    @admin.display(description="endpoint", ordering="endpoint")
    def short_endpoint(self, model: EmbeddingModel) -> SafeString:
        if not model.endpoint:
            return mark_safe("—")
        return format_html('<span class="cr-truncate" title="{}">{}</span>', model.endpoint, model.endpoint)

    @admin.display(description="dim", ordering="dimensions")
    def dim(self, model: EmbeddingModel) -> int | SafeString:
        # The live revision's dimensions; a model not deployed has only an expectation, on hover.
        if model.live_revision and model.dimensions:
            return model.dimensions
        if model.dimensions:
            return format_html('<span title="{} expected; no revision is live">—</span>', model.dimensions)
        return mark_safe("—")

    @admin.display(description="drift")
    def drift_badge(self, model: EmbeddingModel) -> SafeString:
        drifts = getattr(model, "open_drifts", [])
        if not drifts:
            return mark_safe("—")
        drift = drifts[0]
        # The detail and since when in the badge's tooltip: the list fits 1400 px.
        since = f"{relative_time(drift.detected_at)}, {format_time(drift.detected_at)}"
        return format_html('<span title="{} (since {})">{}</span>', drift.detail, since, badge("drift", DRIFT_COLOUR))

    @admin.display(description="latest tasks")
    def latest_tasks(self, model: EmbeddingModel) -> SafeString:
        latest = (
            ("deploy", TaskKind.DEPLOYMENT, model.latest_deployment_id, model.latest_deployment_status),
            ("delete", TaskKind.DELETION, model.latest_deletion_id, model.latest_deletion_status),
        )
        lines = [
            format_html(
                '<div><span class="cr-quiet">{}</span> {} {}</div>',
                label,
                status_badge(status or ""),
                task_link(kind, task_id),
            )
            for label, kind, task_id, status in latest
            if task_id is not None
        ]
        return format_html_join("", "{}", ((line,) for line in lines)) or mark_safe("—")

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
                created.append(f"{model.id} (task {short_id(submission.task.pk)})")
            except services.TaskHandOffFailed as exc:
                # Created all the same: it stays pending and the sweeper sends it.
                created.append(f"{model.id} (task {short_id(exc.task_ids[0])})")
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
