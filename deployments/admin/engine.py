"""The task engine's own state, read-only: the supervised worker clusters and what happened to them,
and the inference servers with what each has loaded."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from deployments import selectors
from deployments.admin.display import STATUS_COLOURS, badge
from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import EngineEvent, InferenceServer, TaskStatus, WorkerCluster
from deployments.services.memory import megabytes


@admin.register(WorkerCluster)
class WorkerClusterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written by ``run_workers`` and its canaries."""

    list_display = (
        "name",
        "host",
        "supervisor_pid",
        "cluster_pid",
        "started_at",
        "last_canary_at",
        "restarts",
        "stopped_at",
    )
    readonly_fields = (*list_display, "cluster_started_at", "canary_ran_elsewhere_at", "supervisor_seen_at")
    list_filter = (("stopped_at", admin.EmptyFieldListFilter),)


@admin.register(EngineEvent)
class EngineEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Starts, restarts (with the reason) and stops of the worker clusters."""

    list_display = ("created_at", "kind", "cluster", "message")
    readonly_fields = list_display
    list_filter = ("kind",)
    list_select_related = ("cluster",)


@admin.register(InferenceServer)
class InferenceServerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written by the reconciler at each pass (``INFERENCE_REPLICA_URLS``)."""

    list_display = ("url", "answers", "memory", "loaded_names", "checked_at", "last_seen_at", "error")
    readonly_fields = ("url", "live", "memory", "loaded", "error", "checked_at", "last_seen_at")

    @admin.display(description="memory")
    def memory(self, server: InferenceServer) -> str:
        """Used and free of REPLICA_MEMORY_BYTES, by the recorded footprints of what it has loaded."""
        memory = selectors.servers_memory([server])[server.url]  # one query; a handful of servers
        shown = (
            f"{megabytes(memory.used_bytes)} used of {megabytes(memory.budget_bytes)}, "
            f"{megabytes(memory.free_bytes)} free ({len(memory.held)} revision(s))"
        )
        if memory.unrecorded:
            shown += f"; {len(memory.unrecorded)} loaded with no footprint on record"
        return shown

    @admin.display(description="answers", ordering="live")
    def answers(self, server: InferenceServer) -> SafeString:
        if server.live:
            return badge("live", STATUS_COLOURS[TaskStatus.DONE])
        return badge("down", STATUS_COLOURS[TaskStatus.FAILED])

    @admin.display(description="loaded")
    def loaded_names(self, server: InferenceServer) -> SafeString:
        return format_html_join(" ", "<code>{}</code>", ((name,) for name in server.loaded)) or "—"
