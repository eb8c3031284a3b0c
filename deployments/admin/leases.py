"""The engine's per-model leases, read-only."""

from __future__ import annotations

from django.contrib import admin

from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import ModelLease


@admin.register(ModelLease)
class ModelLeaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The engine's per-model leases, to look at: editing one by hand would break its guarantees."""

    list_display = ("embedding_model_id", "owner", "generation", "task_id", "expires_at", "next_sequence")
    readonly_fields = list_display
