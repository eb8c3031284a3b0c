"""The task engine's own state: the supervised worker clusters and what happened to them, read-only."""

from __future__ import annotations

from django.contrib import admin

from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import EngineEvent, WorkerCluster


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
