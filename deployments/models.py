"""The registry of embedding models, the deployment and deletion tasks, and their timelines.

The task row is the single source of truth about a task: the queue only carries its id. The
per-model ``ModelLease`` row serializes work on a model across every worker on every machine.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from deployments.inference import MAX_MODEL_ID_LENGTH, InvalidModelId, SourceRefused, validate_model_id
from deployments.inference.allowed_servers import tracking_server_refusal
from deployments.inference.sources import checked_source
from deployments.task_ids import MAX_TASK_ID_LENGTH, InvalidTaskId, new_task_id, validate_task_id


def validate_embedding_model_id(value: str) -> None:
    """Django validator around the serving layer's id rule (one piece of code per idea)."""
    try:
        validate_model_id(value)
    except InvalidModelId as exc:
        raise ValidationError(str(exc)) from exc


# MLflow tracking URIs a worker may be pointed at: its own server over HTTP(S), or Databricks.
TRACKING_URI_PATTERN = r"^(https?://[^\s/?#]+\S*|databricks(://[A-Za-z0-9_.-]+)?)$"
_TRACKING_URI = re.compile(TRACKING_URI_PATTERN)


def validate_tracking_uri(value: str) -> None:
    """An MLflow tracking URI that the operator allowed: the worker sends it MLflow's credentials."""
    if not value:
        return
    if not _TRACKING_URI.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not an MLflow tracking URI: use http(s)://host[:port][/path] or databricks"
        )
    if refusal := tracking_server_refusal(value):
        raise ValidationError(refusal)


def validate_safe_task_id(value: str) -> None:
    """Django validator around the one task id rule (``deployments.task_ids``)."""
    try:
        validate_task_id(value)
    except InvalidTaskId as exc:
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
        max_length=1024,
        help_text=(
            "Where the artifacts are: an absolute path or file:// URI inside an allowed source root, "
            "hf://ORG/REPO@REVISION (the local Hugging Face cache), or an MLflow URI "
            "(models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH)."
        ),
    )
    mlflow_tracking_uri = models.CharField(
        "MLflow tracking URI",
        max_length=1024,
        blank=True,
        validators=[validate_tracking_uri],
        help_text="The MLflow tracking server of this model's models:/ or runs:/ source; blank: MLFLOW_TRACKING_URI.",
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

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any) -> EmbeddingModel:
        instance = super().from_db(db, field_names, values)
        # The source as registered was checked when it was set: not again at every later save. A change
        # that keeps it (a new name) is not refused because its files were damaged since: the deploy's
        # fetch names them then.
        instance._checked_source = (instance.__dict__.get("source"), instance.__dict__.get("mlflow_tracking_uri"))
        return instance

    def check_source(self) -> None:
        """Raise SourceRefused unless the serving layer accepts the source (inside the allowed roots, its
        artifacts whole, a registry that knows it); each source and server is checked once per instance."""
        checked = (self.source, self.mlflow_tracking_uri)
        if checked == getattr(self, "_checked_source", None):
            return
        checked_source(self.source, settings.ALLOWED_SOURCE_ROOTS, self.mlflow_tracking_uri or None)
        self._checked_source = checked

    def clean(self) -> None:
        # The admin and the API both validate through here: a truncated file is refused here, not found at
        # the first deploy.
        try:
            validate_tracking_uri(self.mlflow_tracking_uri)
        except ValidationError:
            return  # the field's own error says why: the source is not asked of a server that may not be called
        try:
            self.check_source()
        except SourceRefused as exc:
            raise ValidationError({"source": str(exc)}) from exc


class Drift(models.Model):
    """A time the inference server did not serve what the registry says is live, and what was done.

    Opened by the reconciler when it sees the difference, closed (``resolved_at``) once the server
    serves the live revision again or the registry is corrected; ``action`` says what it did.
    """

    embedding_model = models.ForeignKey(EmbeddingModel, on_delete=models.CASCADE, related_name="drifts")
    detected_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    registered_revision = models.CharField(max_length=128, blank=True)
    served_revision = models.CharField(max_length=128, blank=True, help_text="Empty: the server served nothing.")
    detail = models.TextField(blank=True, help_text="What the reconciler saw.")
    action = models.TextField(blank=True, help_text="What the reconciler did about it, last first.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-detected_at"]
        constraints = [
            # At most one open drift per model: the reconciler updates it rather than opening another.
            models.UniqueConstraint(
                fields=["embedding_model"], condition=Q(resolved_at__isnull=True), name="drift_one_open_per_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.embedding_model_id} drift since {self.detected_at:%Y-%m-%d %H:%M:%S}"


class InferenceServer(models.Model):
    """An inference server (replica) as the reconciler last saw it: does it answer, what has it loaded."""

    url = models.URLField(primary_key=True, max_length=300)
    live = models.BooleanField(default=False, help_text="It answered its liveness probe at the last check.")
    loaded = models.JSONField(default=list, blank=True, help_text="Names the server reported ready.")
    error = models.CharField(max_length=300, blank=True, help_text="Why the last check failed.")
    checked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="The last time it answered.")

    class Meta:
        ordering = ["url"]

    def __str__(self) -> str:
        return self.url


class ModelRevision(models.Model):
    """What one revision of a model holds in a replica's memory, and the deploy loading it now.

    ``memory_bytes`` is an estimate from the revision's weight files until a deploy has loaded it,
    then what the runtime counted (``measured``). The deploy planner adds up these rows for the names
    a replica has ready, plus ``loading_task``'s reservations, under the capacity lock.
    """

    name = models.CharField(
        primary_key=True, max_length=MAX_MODEL_ID_LENGTH + 17, help_text="<model id>~<revision>, as served."
    )
    embedding_model = models.ForeignKey(EmbeddingModel, on_delete=models.CASCADE, related_name="revisions")
    revision = models.CharField(max_length=16)
    memory_bytes = models.BigIntegerField(help_text="Bytes of weights the revision holds on a replica.")
    measured = models.BooleanField(default=False, help_text="Counted by the runtime at load, not estimated.")
    # While this task is processing, the revision's memory is reserved on every replica.
    loading_task = models.ForeignKey(
        "Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused"
    CANCELED = "canceled", "Canceled"


ACTIVE_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING)
TERMINAL_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.REFUSED, TaskStatus.CANCELED)


class TaskKind(models.TextChoices):
    DEPLOYMENT = "deployment", "Deployment"
    DELETION = "deletion", "Deletion"


class Task(models.Model):
    """A deployment or a deletion: one table for both kinds, as pulpcore keeps its tasks.

    ``sequence`` orders all the tasks of one model, whatever their kind. The status only changes
    through ``deployments.services.transitions.transition``, which also writes the timeline.
    """

    KIND: str = ""  # set by the proxies below; a Task loaded from the table carries its ``kind``

    # A client may name its task (any safe string, e.g. "1234"); otherwise it gets a new UUID's string.
    id = models.CharField(
        primary_key=True,
        max_length=MAX_TASK_ID_LENGTH,
        default=new_task_id,
        editable=False,
        validators=[validate_safe_task_id],
    )
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
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
        ordering = ["-created_at"]
        indexes = [
            # The latest task of a kind for a model (/deploy-status): one index seek, however long its history.
            models.Index(fields=["embedding_model_id", "kind", "sequence", "attempt"], name="task_model_kind_seq"),
            # A model's queue: its pending and processing tasks in submission order (two short range seeks).
            # Not a partial index: SQLite cannot match a partial index's condition to a parameterized IN.
            models.Index(fields=["embedding_model_id", "status", "sequence", "attempt"], name="task_model_queue"),
            # The history of one kind, newest first (the admin's two lists, the API's listings).
            models.Index(fields=["kind", "-created_at"], name="task_kind_created"),
            # One kind's history filtered by status (the admin's lists): a seek, not a walk past other statuses.
            models.Index(fields=["kind", "status", "-created_at"], name="task_kind_status_created"),
            models.Index(fields=["-created_at"], name="task_created"),
            # Filtered by status (e.g. canceled, 1% of rows), the dashboard's latest failures and the sweeper's
            # scans of pending and processing tasks: a seek per status, not a walk past a million rows.
            models.Index(fields=["status", "-created_at"], name="task_status_created"),
        ]
        constraints = [models.CheckConstraint(condition=Q(kind__in=TaskKind.values), name="task_kind_known")]

    def __init__(self, *args: Any, **kwargs: Any):
        # A proxy built by keyword (code, factories) gets its kind; rows loaded from the table pass
        # every column positionally and keep the kind they have.
        if self.KIND and not args:
            kwargs.setdefault("kind", self.KIND)
        super().__init__(*args, **kwargs)

    def __str__(self) -> str:
        return f"{self.kind} {self.embedding_model_id} #{self.sequence} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def stage(self) -> str:
        """Where the task is: the stage it started and has not ended, else the one it failed at, else the
        last one it reached ("" before any)."""
        stages = self.metadata.get("stages") or {}
        running = next((stage for stage, info in stages.items() if info.get("state") == "started"), "")
        return running or self.metadata.get("failed_stage") or next(reversed(stages), "")


class TaskKindManager(models.Manager):
    """The tasks of one kind: what the proxies' ``objects`` see."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(kind=self.kind)

    def deconstruct(self) -> tuple:
        # Managers are not used in migrations (use_in_migrations is False); this keeps them serializable.
        return (False, f"{__name__}.{type(self).__name__}", None, (self.kind,), {})


class DeploymentTask(Task):
    KIND = TaskKind.DEPLOYMENT

    objects = TaskKindManager(TaskKind.DEPLOYMENT)

    class Meta:
        proxy = True


class DeletionTask(Task):
    KIND = TaskKind.DELETION

    objects = TaskKindManager(TaskKind.DELETION)

    class Meta:
        proxy = True


# The proxy of each kind: admin URLs, per-kind permissions and the API's viewsets are named after them.
TASK_PROXIES: dict[str, type[Task]] = {TaskKind.DEPLOYMENT: DeploymentTask, TaskKind.DELETION: DeletionTask}


# The timeline's event for a hand-off the engine sent again: a pending task says why it waits.
HANDOFF_STAGE = "handoff"
HANDOFF_RESENT = "resent"


class TaskEvent(models.Model):
    """One step of a task's timeline: a stage the serving layer reported, a change of status, or a
    hand-off sent again (``HANDOFF_STAGE``)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    stage = models.CharField(max_length=32)
    state = models.CharField(max_length=16)
    message = models.TextField(blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    actor = models.CharField(
        max_length=200, blank=True, help_text="Who made the change: a user, a worker, the sweeper."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.stage} {self.state}"


class ModelLease(models.Model):
    """One row per model: its queue counter and the lease that lets one worker at a time act on it.

    A worker takes the lease with an atomic ``UPDATE ... WHERE owner = '' OR expires_at < now``
    and keeps it alive with a heartbeat; a lease whose heartbeat stopped expires, and the
    sweeper resolves the task it was running. Every take bumps ``generation``: the fencing token
    a holder checks before each side effect, so a holder that was paused past its expiry and
    wakes up finds it has been superseded. Times are the database's clock, never a host's.
    """

    embedding_model_id = models.CharField(primary_key=True, max_length=MAX_MODEL_ID_LENGTH)
    next_sequence = models.BigIntegerField(default=0)
    owner = models.CharField(max_length=200, blank=True)
    generation = models.BigIntegerField(default=0, help_text="Bumped by every take: the holder's fencing token.")
    # NULL, not "", when the holder runs no task (a free lease, a restore): what the lease code writes.
    task_id = models.CharField(  # noqa: DJ001
        max_length=MAX_TASK_ID_LENGTH,
        null=True,
        blank=True,
        help_text="The task the holder runs; empty for other work.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="lease_expires", condition=~Q(owner=""))]

    def __str__(self) -> str:
        return f"{self.embedding_model_id}: {self.owner or 'free'}"


class CapacityLock(models.Model):
    """A single row that serializes "how many models hold a server slot" checks across models.

    Reserving a slot reads the count and marks the model under ``SELECT ... FOR UPDATE`` of this
    row, so two models cannot both take the last slot (MAX_DEPLOYED_MODELS).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="capacity_lock_single_row")]

    def __str__(self) -> str:
        return "capacity lock"


class WorkerCluster(models.Model):
    """One supervised django-q2 cluster (``manage.py run_workers``) and the proof that it still runs jobs.

    ``last_canary_at`` is written by a canary job that ran *in this cluster* (a worker of its process
    group), so a cluster whose workers wedged cannot look alive because a neighbour answered for it.
    """

    name = models.CharField(max_length=200, unique=True, help_text="host:supervisor pid:nonce")
    host = models.CharField(max_length=200)
    supervisor_pid = models.PositiveIntegerField()
    cluster_pid = models.PositiveIntegerField(
        null=True, blank=True, help_text="The running qcluster: its pid is also its process group."
    )
    started_at = models.DateTimeField(auto_now_add=True)
    cluster_started_at = models.DateTimeField(null=True, blank=True)
    last_canary_at = models.DateTimeField(null=True, blank=True, help_text="The last canary job this cluster ran.")
    # Every worker was running a task whose lease it renews: the canary may wait (the watchdog's rule, and /readyz's).
    all_busy_at = models.DateTimeField(null=True, blank=True)
    # A canary this supervisor sent was run by another cluster on the shared queue: send the next one now.
    canary_ran_elsewhere_at = models.DateTimeField(null=True, blank=True)
    # The supervisor's own heartbeat, written every canary period: a row whose supervisor went silent
    # (SIGKILLed, machine gone) is closed by the other supervisors and no longer counted as running.
    supervisor_seen_at = models.DateTimeField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when its supervisor stopped or vanished.")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["stopped_at", "host"], name="workercluster_running")]

    def __str__(self) -> str:
        return self.name


class EngineEvent(models.Model):
    """Something the task engine did to itself that operators should see: a cluster started, restarted, stopped."""

    class Kind(models.TextChoices):
        CLUSTER_STARTED = "cluster_started", "Cluster started"
        CLUSTER_RESTARTED = "cluster_restarted", "Cluster restarted"
        CLUSTER_STOPPED = "cluster_stopped", "Cluster stopped"
        CLUSTER_ABANDONED = "cluster_abandoned", "Cluster abandoned"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    cluster = models.ForeignKey(WorkerCluster, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.cluster or ''}".strip()


class AuditEntry(models.Model):
    """Who did what to a task or to the registry, when, and through which door (API, admin, command).

    Written only by ``deployments.services.audit.record``. Entries outlive what they describe (a pruned
    task, an unregistered model), so the object is named by kind and id, not by a foreign key.
    """

    class Via(models.TextChoices):
        API = "api", "API"
        ADMIN = "admin", "Admin"
        COMMAND = "command", "Management command"
        # No person behind it: the sweeper's automatic retry, code calling a service directly.
        SYSTEM = "system", "System"

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        CANCEL = "cancel", "Cancel"
        RETRY = "retry", "Retry"
        CHANGE = "change", "Change"
        DELETE = "delete", "Delete"

    class ObjectKind(models.TextChoices):
        DEPLOYMENT = TaskKind.DEPLOYMENT.value, "Deployment task"
        DELETION = TaskKind.DELETION.value, "Deletion task"
        EMBEDDING_MODEL = "embedding_model", "Embedding model"

    at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=200, help_text="A user name, or the command and the OS user that ran it.")
    # Kept when the user is deleted: ``actor`` still names them.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField(max_length=16, choices=Via.choices)
    action = models.CharField(max_length=16, choices=Action.choices)
    object_kind = models.CharField(max_length=32, choices=ObjectKind.choices)
    object_id = models.CharField(max_length=max(MAX_TASK_ID_LENGTH, MAX_MODEL_ID_LENGTH))
    embedding_model_id = models.CharField(max_length=MAX_MODEL_ID_LENGTH)
    changes = models.JSONField(
        default=dict, blank=True, help_text='What changed: {"field": [old, new]}, or what was asked for.'
    )
    request_id = models.CharField(max_length=100, blank=True, help_text="The request's X-Request-ID, if it had one.")
    ip = models.GenericIPAddressField(null=True, blank=True, help_text="The client's address, for API and admin.")

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            # A model's trail (its admin page, GET /audit?embedding_model_id=), newest first.
            models.Index(fields=["embedding_model_id", "-at", "-id"], name="audit_model_at"),
            # A task's trail (its admin page, GET /audit?task_id=).
            models.Index(fields=["object_id", "-at", "-id"], name="audit_object_at"),
            models.Index(fields=["-at", "-id"], name="audit_at"),
        ]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_kind} {self.object_id}"
