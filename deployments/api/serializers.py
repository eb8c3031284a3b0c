"""Request validation and response shapes. Thin: the rules themselves live in the serving layer and services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deployments import selectors
from deployments.inference import (
    MAX_MODEL_ID_LENGTH,
    MODEL_ID_PATTERN,
    InvalidModelId,
    SourceRefused,
    validate_model_id,
)
from deployments.models import (
    TRACKING_URI_PATTERN,
    AuditEntry,
    Drift,
    EmbeddingModel,
    InferenceServer,
    Task,
    TaskEvent,
    TaskStatus,
    validate_tracking_uri,
)
from deployments.services.registry import check_source
from deployments.task_config import (
    DeletionConfigSerializer,
    DeploymentConfigSerializer,
    NoUnknownKeysMixin,
    StrictIntegerField,
)
from deployments.task_ids import (
    ALLOWED_TASK_ID_CHARACTERS,
    MAX_TASK_ID_LENGTH,
    TASK_ID_PATTERN,
    InvalidTaskId,
    validate_task_id,
)


class CheckedIdField(serializers.CharField):
    """A string id checked by its one rule (``check``, which raises ``invalid``): never coerced or trimmed."""

    default_error_messages = {"not_a_string": "must be a string, not {type}."}
    check: Callable[[str], str]
    invalid: type[Exception]

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("trim_whitespace", False)  # " abc" is an unsafe id, not "abc"
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string", type=type(data).__name__)
        try:
            return self.check(data)
        except self.invalid as exc:
            raise serializers.ValidationError(str(exc)) from exc


@extend_schema_field(
    {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": MAX_MODEL_ID_LENGTH, "example": "all-minilm-l6-v2"}
)
class ModelIdField(CheckedIdField):
    """An embedding model id, checked by the serving layer's own rule (validate_model_id)."""

    check = staticmethod(validate_model_id)
    invalid = InvalidModelId


@extend_schema_field({"type": "string", "pattern": TASK_ID_PATTERN, "maxLength": MAX_TASK_ID_LENGTH, "example": "1234"})
class TaskIdField(CheckedIdField):
    """A task id, checked by the one task id rule (``deployments.task_ids``)."""

    check = staticmethod(validate_task_id)
    invalid = InvalidTaskId


class TaskRequestSerializer(NoUnknownKeysMixin, serializers.Serializer):
    """A deploy or delete request: the model (by embedding_model_id or model_id), a task_id, a config."""

    embedding_model_id = ModelIdField(required=False, help_text="The embedding model to act on.")
    model_id = ModelIdField(required=False, help_text="Alias of embedding_model_id (the spec's examples use it).")
    task_id = TaskIdField(
        required=False,
        help_text=f"Optional id the client chooses ({ALLOWED_TASK_ID_CHARACTERS}; at most {MAX_TASK_ID_LENGTH}; "
        "not starting with '.'). The same id with the same request returns the same task; with a different model, "
        "kind or config it is a 409. Without it the server names the task with a new UUID.",
    )
    config_serializer_class: type[serializers.Serializer] = DeploymentConfigSerializer

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["config"] = self.config_serializer_class(required=False)
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        alias = attrs.pop("model_id", None)
        model_id = attrs.get("embedding_model_id")
        if model_id and alias and model_id != alias:
            raise serializers.ValidationError({"model_id": ["differs from embedding_model_id; send one of them."]})
        if not (model_id or alias):
            raise serializers.ValidationError({"embedding_model_id": ["This field is required."]})
        attrs["embedding_model_id"] = model_id or alias
        return attrs


class DeploymentRequestSerializer(TaskRequestSerializer):
    config_serializer_class = DeploymentConfigSerializer


class DeletionRequestSerializer(TaskRequestSerializer):
    config_serializer_class = DeletionConfigSerializer


class ErrorSerializer(serializers.Serializer):
    """Every error answer (deployments.api.exceptions): detail says what is wrong; a 400 names each field."""

    detail = serializers.CharField(help_text="What went wrong, in one line ('field: problem; ...' for a 400).")
    errors = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="A 400 only: each field with its problems; a nested object (config) nests the same way.",
    )


class TaskSerializer(serializers.Serializer):
    """ModelDeploymentResponse / ModelDeletionResponse of the spec."""

    task_id = serializers.CharField(source="id", read_only=True, help_text="The client's task_id, or a UUID.")
    embedding_model_id = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=TaskStatus.choices, read_only=True)
    detail = serializers.SerializerMethodField(
        help_text="Pending: why it waits (queued behind another task of its model, waiting for a worker since "
        "when, its hand-off re-sent at when). Finished: the outcome, or the stage and reason it failed at."
    )
    metadata = serializers.JSONField(
        read_only=True,
        help_text="attempt, retry_of, stages (state, message, duration per stage), timings, and on success "
        "revision, previous_revision, endpoint, dimensions, replicas, skipped_replicas, switch_ms; on failure "
        "failed_stage and reason, and after a rollback in the bake revision, previous_revision and rollback_ms.",
    )
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    @extend_schema_field(OpenApiTypes.STR)
    def get_detail(self, task: Task) -> str:
        return selectors.task_detail(task)


class TaskEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["stage", "state", "message", "duration_s", "created_at"]
        read_only_fields = fields


class AuditEntrySerializer(serializers.ModelSerializer):
    """Who did what to a task or a registered model, when, and through which door."""

    changes = serializers.JSONField(
        read_only=True,
        help_text='For a model: {"field": [old, new]} per field that changed (null on the side where it did not '
        'exist). For a task: its config when created, "retried_as" and "attempt" when retried.',
    )

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "actor",
            "via",
            "action",
            "object_kind",
            "object_id",
            "embedding_model_id",
            "changes",
            "request_id",
            "ip",
        ]
        read_only_fields = fields


class InferenceServerSerializer(serializers.ModelSerializer):
    """An inference server as the reconciler last saw it, with its memory (``selectors.ReplicaMemory``
    set as ``memory`` on each server by the view)."""

    memory_budget_bytes = serializers.IntegerField(
        source="memory.budget_bytes", read_only=True, help_text="REPLICA_MEMORY_BYTES: the weights it may hold."
    )
    memory_used_bytes = serializers.IntegerField(
        source="memory.used_bytes",
        read_only=True,
        help_text="The recorded footprints of the revisions it has loaded, and of those running deploys reserved.",
    )
    memory_free_bytes = serializers.IntegerField(source="memory.free_bytes", read_only=True)

    class Meta:
        model = InferenceServer
        fields = [
            "url",
            "live",
            "loaded",
            "memory_budget_bytes",
            "memory_used_bytes",
            "memory_free_bytes",
            "error",
            "checked_at",
            "last_seen_at",
        ]
        read_only_fields = fields


class DriftSerializer(serializers.ModelSerializer):
    """Since when the server has not served what the registry says is live, and what was done."""

    class Meta:
        model = Drift
        fields = ["detected_at", "registered_revision", "served_revision", "detail", "action"]
        read_only_fields = fields


class EmbeddingModelSerializer(NoUnknownKeysMixin, serializers.ModelSerializer):
    """A registered embedding model: where it comes from, and what of it is live."""

    id = ModelIdField(help_text="The embedding model id (letters, digits, '.', '_', '-'; at most 128).")
    dimensions = StrictIntegerField(min_value=1, max_value=65536, required=False, allow_null=True)
    mlflow_tracking_uri = serializers.RegexField(
        TRACKING_URI_PATTERN,
        max_length=1024,
        required=False,
        allow_blank=True,
        help_text=(
            "The MLflow tracking server of a models:/ or runs:/ source, one the operator allowed "
            "(MLFLOW_TRACKING_URI's, or listed in MLFLOW_ALLOWED_TRACKING_URIS); "
            "blank: the server's MLFLOW_TRACKING_URI."
        ),
    )
    drift = serializers.SerializerMethodField(help_text="The open drift, or null while the server serves it as live.")

    class Meta:
        model = EmbeddingModel
        fields = [
            "id",
            "name",
            "source",
            "mlflow_tracking_uri",
            "dimensions",
            "state",
            "live_revision",
            "endpoint",
            "drift",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["state", "live_revision", "endpoint", "created_at", "updated_at"]

    @extend_schema_field(DriftSerializer(allow_null=True))
    def get_drift(self, model: EmbeddingModel) -> dict[str, Any] | None:
        drifts = getattr(model, "open_drifts", None)
        if drifts is None:  # not prefetched (a model just created or changed): read it
            drifts = list(model.drifts.filter(resolved_at__isnull=True))
        return DriftSerializer(drifts[0]).data if drifts else None

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if self.instance is not None:
            fields["id"].read_only = True  # the id names server models and folders: it never changes
        return fields

    def to_internal_value(self, data: Any) -> Any:
        # The id is read-only once registered; a change of it sent in the body is refused, not ignored.
        if self.instance is not None and isinstance(data, dict) and "id" in data and data["id"] != self.instance.pk:
            raise serializers.ValidationError(
                {
                    "id": [
                        f"the id of embedding model {self.instance.pk!r} cannot change to {data['id']!r}: it names "
                        "the model on the servers and its repository folder; register a new model instead."
                    ]
                }
            )
        return super().to_internal_value(data)

    def validate_id(self, value: str) -> str:
        if self.instance is None and EmbeddingModel.objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"embedding model {value!r} is already registered.")
        return value

    def validate_mlflow_tracking_uri(self, value: str) -> str:
        validate_tracking_uri(value)  # the model's rule: a server the operator allowed (its form passed above)
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The source is checked against the model's tracking server, so both fields together.
        if "source" in attrs or "mlflow_tracking_uri" in attrs:
            source = attrs.get("source", getattr(self.instance, "source", ""))
            tracking_uri = attrs.get("mlflow_tracking_uri", getattr(self.instance, "mlflow_tracking_uri", ""))
            try:
                check_source(source, tracking_uri)
            except SourceRefused as exc:
                raise serializers.ValidationError({"source": [str(exc)]}) from exc
        return attrs
