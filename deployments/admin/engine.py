"""The task engine's own state: the supervised worker clusters and what happened to them, read-only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import EngineEvent, WorkerCluster
from deployments.services.workers import forget_clusters


@admin.register(WorkerCluster)
class WorkerClusterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written by ``run_workers`` and its canaries; operators may only mark a vanished cluster as gone."""

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
    readonly_fields = (*list_display, "cluster_started_at", "canary_ran_elsewhere_at")
    list_filter = (("stopped_at", admin.EmptyFieldListFilter),)
    actions = ["forget"]

    @admin.action(description="Forget selected clusters (their machine is gone)", permissions=["forget"])
    def forget(self, request: HttpRequest, queryset: QuerySet[WorkerCluster]) -> None:
        forgotten = forget_clusters(queryset, by=request.user.get_username())
        self.message_user(request, f"{forgotten} cluster(s) forgotten.", messages.SUCCESS)

    def has_forget_permission(self, request: HttpRequest) -> bool:
        # No model permission fits "declare a machine gone"; it changes what /readyz reports: superusers only.
        return request.user.is_superuser


@admin.register(EngineEvent)
class EngineEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Starts, restarts (with the reason) and stops of the worker clusters."""

    list_display = ("created_at", "kind", "cluster", "message")
    readonly_fields = list_display
    list_filter = ("kind",)
    list_select_related = ("cluster",)
