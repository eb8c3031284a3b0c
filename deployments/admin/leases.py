"""The engine's per-model leases, read-only."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import ModelLease


@admin.register(ModelLease)
class ModelLeaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The engine's per-model leases, to look at: editing one by hand would break its guarantees."""

    list_display = ("embedding_model_id", "owner", "generation", "task_id", "expires_at", "next_sequence")
    readonly_fields = list_display

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelLease]:
        # Only models' leases. Before the capacity lock had a table of its own it was a sentinel lease row,
        # "~capacity" (migration 0003 drops it); no model id starts with "~", so such a row is internal.
        return super().get_queryset(request).exclude(embedding_model_id__startswith="~")
