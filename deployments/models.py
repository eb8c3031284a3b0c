"""The registry of embedding models, the deployment and deletion tasks, and their timelines.

The task row is the single source of truth about a task: the queue only carries its id. The
per-model ``ModelLease`` row serializes work on a model across every worker on every machine.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from deployments.inference import MAX_MODEL_ID_LENGTH, InvalidModelId, SourceRefused, open_source, validate_model_id


def validate_embedding_model_id(value: str) -> None:
    """Django validator around the serving layer's id rule (one piece of code per idea)."""
    try:
        validate_model_id(value)
    except InvalidModelId as exc:
        raise ValidationError(str(exc)) from exc


class EmbeddingModel(models.Model):
    """A model the control plane may deploy, and what of it is live right now."""

    class State(models.TextChoices):
        NOT_DEPLOYED = "not_deployed", "Not deployed"
        DEPLOYING = "deploying", "Deploying (first revision)"
        DEPLOYED = "deployed", "Deployed"
        DELETING = "deleting", "Deleting"

    # States that hold (or are about to hold) a slot on the inference server.
    SLOT_STATES = (State.DEPLOYING, State.DEPLOYED, State.DELETING)

    id = models.CharField(
        primary_key=True,
        max_length=MAX_MODEL_ID_LENGTH,
        validators=[validate_embedding_model_id],
        help_text="The embedding model id: the server name and repository folder of the model.",
    )
    name = models.CharField(max_length=200, blank=True)
    source = models.CharField(
        max_length=1024, help_text="Absolute path or file:// URI of the artifacts, inside an allowed source root."
    )
    dimensions = models.PositiveIntegerField(
        null=True, blank=True, help_text="Embedding size; checked by the smoke test when set."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.NOT_DEPLOYED, db_index=True)
    live_revision = models.CharField(max_length=128, blank=True)
    endpoint = models.CharField(max_length=1024, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id

    def clean(self) -> None:
        # The admin and the API both validate through here: a source must be one the serving layer accepts.
        try:
            open_source(self.source, settings.ALLOWED_SOURCE_ROOTS)
        except SourceRefused as exc:
            raise ValidationError({"source": str(exc)}) from exc


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused"
    CANCELED = "canceled", "Canceled"


ACTIVE_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING)
TERMINAL_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED)


class Task(models.Model):
    """What deployment and deletion tasks share. ``sequence`` orders the tasks of one model."""

    KIND: str = ""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    embedding_model_id = models.CharField(max_length=MAX_MODEL_ID_LENGTH)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    detail = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    # Position in the model's queue, shared by deployments and deletions (see ModelLease.next_sequence).
    # An automatic retry of a lost attempt keeps its position; a retry asked for by a user queues anew.
    sequence = models.BigIntegerField()
    attempt = models.PositiveIntegerField(default=1)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    requested_by = models.CharField(max_length=150, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True, help_text="The worker that runs (or ran) the task.")
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="Last hand-off to the queue.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.KIND} {self.embedding_model_id} #{self.sequence} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _task_indexes(prefix: str) -> list[models.Index]:
    return [
        # "latest task of a model" and "earlier unfinished task of a model": one index seek each.
        models.Index(fields=["embedding_model_id", "sequence", "attempt"], name=f"{prefix}_model_seq"),
        # The sweeper and listings filter on status; the partial index stays tiny with millions of done rows.
        models.Index(
            fields=["status", "created_at"],
            name=f"{prefix}_active",
            condition=Q(status__in=["pending", "processing"]),
        ),
        models.Index(fields=["-created_at"], name=f"{prefix}_created"),
        # The admin's history filtered by status (e.g. canceled, 1% of rows) and the dashboard's latest
        # failures: a seek per status instead of walking the created_at index past a million rows.
        models.Index(fields=["status", "-created_at"], name=f"{prefix}_status_created"),
    ]


class DeploymentTask(Task):
    KIND = "deployment"

    class Meta(Task.Meta):
        indexes = _task_indexes("deploytask")


class DeletionTask(Task):
    KIND = "deletion"

    class Meta(Task.Meta):
        indexes = _task_indexes("deletetask")


class TaskEvent(models.Model):
    """One step of a task's timeline, as the serving layer (or the engine) reported it."""

    deployment_task = models.ForeignKey(
        DeploymentTask, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    deletion_task = models.ForeignKey(
        DeletionTask, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    stage = models.CharField(max_length=32)
    state = models.CharField(max_length=16)
    message = models.TextField(blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(deployment_task__isnull=False, deletion_task__isnull=True)
                | Q(deployment_task__isnull=True, deletion_task__isnull=False),
                name="taskevent_exactly_one_task",
            )
        ]

    def __str__(self) -> str:
        return f"{self.stage} {self.state}"


class ModelLease(models.Model):
    """One row per model: its task counter and the lease that lets one worker at a time act on it.

    A worker takes the lease with an atomic ``UPDATE ... WHERE owner = '' OR expires_at < now``
    and keeps it alive with a heartbeat; a lease whose heartbeat stopped expires, and the
    sweeper resolves the task it was running.
    """

    embedding_model_id = models.CharField(primary_key=True, max_length=MAX_MODEL_ID_LENGTH)
    next_sequence = models.BigIntegerField(default=0)
    owner = models.CharField(max_length=200, blank=True)
    task_kind = models.CharField(max_length=16, blank=True)
    task_id = models.UUIDField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="lease_expires", condition=~Q(owner=""))]

    def __str__(self) -> str:
        return f"{self.embedding_model_id}: {self.owner or 'free'}"
