"""A basic admin: the registry is editable, tasks and their timelines are visible."""

from django.contrib import admin

from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, ModelLease, TaskEvent


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "state", "live_revision", "dimensions", "updated_at")
    list_filter = ("state",)
    search_fields = ("id", "name")
    readonly_fields = ("state", "live_revision", "endpoint", "created_at", "updated_at")


class DeploymentEventInline(admin.TabularInline):
    model = TaskEvent
    fk_name = "deployment_task"
    fields = ("created_at", "stage", "state", "duration_s", "message")
    readonly_fields = fields
    extra = 0
    can_delete = False


class DeletionEventInline(DeploymentEventInline):
    fk_name = "deletion_task"


class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "embedding_model_id", "status", "attempt", "created_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("=id", "embedding_model_id")
    readonly_fields = (
        "id",
        "embedding_model_id",
        "status",
        "detail",
        "metadata",
        "config",
        "sequence",
        "attempt",
        "retry_of",
        "requested_by",
        "lease_owner",
        "dispatched_at",
        "started_at",
        "finished_at",
        "created_at",
        "updated_at",
    )
    show_full_result_count = False  # no COUNT(*) over millions of rows on every page


@admin.register(DeploymentTask)
class DeploymentTaskAdmin(TaskAdmin):
    inlines = [DeploymentEventInline]


@admin.register(DeletionTask)
class DeletionTaskAdmin(TaskAdmin):
    inlines = [DeletionEventInline]


@admin.register(ModelLease)
class ModelLeaseAdmin(admin.ModelAdmin):
    list_display = ("embedding_model_id", "owner", "task_kind", "task_id", "expires_at", "next_sequence")
    readonly_fields = list_display
