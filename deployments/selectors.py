"""Read side: the queries the API, the commands and the task engine make about tasks and models.

The admin's dashboard keeps its own queries in ``deployments.admin.dashboard``."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.models import (
    Case,
    CharField,
    Count,
    DateTimeField,
    Exists,
    Field,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Greatest, Now
from django.utils import timezone

from deployments.clock import format_time
from deployments.inference import ModelRepository, served_name
from deployments.models import (
    ACTIVE_STATUSES,
    HANDOFF_RESENT,
    HANDOFF_STAGE,
    AuditEntry,
    Drift,
    EmbeddingModel,
    EngineEvent,
    InferenceServer,
    ModelLease,
    ModelRevision,
    Task,
    TaskEvent,
    TaskKind,
    TaskStatus,
    WorkerCluster,
)

# How many tasks an ambiguous short id names, at most.
SHORT_ID_CANDIDATES = 5


def find_task(task_id: str, kind: str | None = None, *, explain_waiting: bool = False) -> Task | None:
    """The task with that id, of the given kind when one is given (one query either way); with
    ``explain_waiting``, annotated for ``waiting_reason`` in the same query."""
    tasks = Task.objects.filter(pk=task_id)
    if kind is not None:
        tasks = tasks.filter(kind=kind)
    return (with_waiting_reason(tasks) if explain_waiting else tasks).first()


# A revision deployed again and again (rollbacks back and forth) is looked for among this many of its deploys.
LIVE_ORIGIN_TASKS = 50


@dataclass(frozen=True)
class LiveOrigin:
    """Where a model's live revision came from."""

    source: dict[str, str]  # the URI fetched and what it resolved to then; {} when nothing recorded it
    fetched_by: Task | None  # the deployment that fetched it (None: known from the revision's own record)
    deployed_by: Task | None  # the deployment that made it live last: a rollback deploys it again, unfetched


def live_revision_origin(model: EmbeddingModel) -> LiveOrigin | None:
    """What the model's live revision was fetched from (None when nothing is live): the deployment that fetched
    it, even when a later one (a rollback to it) made it live again; else the revision's PROVENANCE.json, for a
    revision whose fetching task was pruned or that the reconciler found live."""
    if not model.live_revision:
        return None
    done = Task.objects.filter(
        kind=TaskKind.DEPLOYMENT,
        embedding_model_id=model.pk,
        status=TaskStatus.DONE,
        metadata__revision=model.live_revision,
    )
    tasks = list(done.order_by("-finished_at")[:LIVE_ORIGIN_TASKS])
    deployed_by = tasks[0] if tasks else None
    if fetched_by := next((task for task in tasks if (task.metadata or {}).get("source")), None):
        return LiveOrigin(fetched_by.metadata["source"], fetched_by, deployed_by)
    provenance = ModelRepository(settings.MODEL_REPOSITORY_ROOT).provenance(model.pk, model.live_revision)
    return LiveOrigin(provenance, None, deployed_by)


def latest_task_for_model(kind: str, embedding_model_id: str, *, explain_waiting: bool = False) -> Task | None:
    """The most recently submitted task of that kind for the model (the origin returned the first one);
    with ``explain_waiting``, annotated for ``waiting_reason`` in the same query.

    Served by the (embedding_model_id, kind, sequence, attempt) index read backwards: one seek,
    whatever the number of rows.
    """
    tasks = Task.objects.filter(embedding_model_id=embedding_model_id, kind=kind)
    return (with_waiting_reason(tasks) if explain_waiting else tasks).order_by("-sequence", "-attempt").first()


# -- Why a pending task waits -------------------------------------------------------------------------


def _if_pending(subquery: Subquery, output_field: Field) -> Case:
    # Only a pending task's row evaluates the subquery: finished rows of a long history cost nothing.
    return Case(When(status=TaskStatus.PENDING, then=subquery), default=Value(None), output_field=output_field)


def with_waiting_reason(tasks: QuerySet[Task]) -> QuerySet[Task]:
    """Each task with what ``waiting_reason`` reads, in the same query (for a page of tasks: no query per
    row). For a pending task: the first unfinished task ahead of it in its model's queue (an index
    seek), who holds the model's lease when nothing is ahead, and its latest re-sent hand-off."""
    ahead = Task.objects.filter(
        embedding_model_id=OuterRef("embedding_model_id"), status__in=ACTIVE_STATUSES, sequence__lt=OuterRef("sequence")
    ).order_by("sequence", "attempt")
    lease = (
        ModelLease.objects.filter(pk=OuterRef("embedding_model_id"), expires_at__gt=Now())
        .exclude(owner="")
        .exclude(task_id=OuterRef("pk"))
    )
    resent = TaskEvent.objects.filter(task=OuterRef("pk"), stage=HANDOFF_STAGE, state=HANDOFF_RESENT).order_by("-id")
    return tasks.annotate(
        waiting_behind_id=_if_pending(Subquery(ahead.values("pk")[:1]), CharField()),
        waiting_behind_kind=_if_pending(Subquery(ahead.values("kind")[:1]), CharField()),
        waiting_lease_owner=_if_pending(Subquery(lease.values("owner")[:1]), CharField()),
        waiting_resent_at=_if_pending(Subquery(resent.values("created_at")[:1]), DateTimeField()),
    )


def waiting_reason(task: Task) -> str:
    """Why a pending task has not started, in words; "" for any other task.

    - "queued behind <task> (<kind> of <model>)": an earlier task of its model is unfinished;
    - "waiting for the model's lease, held by <owner>": nothing is ahead, but other work (the
      reconciler restoring the model) holds its lease;
    - "hand-off re-sent at <time>": the sweeper sent it to the queue again, no worker took it yet;
    - "waiting for a worker since <time>": handed to the queue, no worker has taken it;
    - "not yet sent to the queue (since <time>)": its hand-off failed or is under way (the sweeper
      sends it).

    Reads the annotations of ``with_waiting_reason``; a task loaded without them costs one query.
    """
    if task.status != TaskStatus.PENDING:
        return ""
    if not hasattr(task, "waiting_behind_id"):
        task = with_waiting_reason(Task.objects.filter(pk=task.pk)).first() or task
        if not hasattr(task, "waiting_behind_id"):
            return ""  # deleted meanwhile
    if task.waiting_behind_id:
        ahead = f"{task.waiting_behind_kind} of {task.embedding_model_id}"
        return f"queued behind {task.waiting_behind_id} ({ahead})"  # whole: a client looks it up by it
    if task.waiting_lease_owner:
        return f"waiting for the model's lease, held by {task.waiting_lease_owner}"
    resent_at = task.waiting_resent_at
    if resent_at is not None and (task.dispatched_at is None or resent_at >= task.dispatched_at):
        return f"hand-off re-sent at {format_time(resent_at)}"
    if task.dispatched_at is not None:
        return f"waiting for a worker since {format_time(task.dispatched_at)}"
    return f"not yet sent to the queue (since {format_time(task.created_at)})"


def stage_progress(task: Task) -> str:
    """Where a processing task is, from its metadata (no query): the stage it runs, for how long (of how
    long, for the bake) and what it does, e.g. "bake: 12 s of 40 s, blue 04b1622bdf2efd11 kept loaded";
    "" for any other task."""
    if task.status != TaskStatus.PROCESSING:
        return ""
    stages = task.metadata.get("stages") or {}
    running = next(((name, info) for name, info in stages.items() if info.get("state") == "started"), None)
    if running is None:  # before the first stage, or between two: a moment
        return f"{next(reversed(stages))}: done" if stages else f"starting: {_seconds_since(task.started_at)}"
    name, info = running
    started_at = info.get("started_at")
    progress = f"{name}: {_seconds_since(datetime.fromisoformat(started_at))}" if started_at else name
    if planned := info.get("planned_s"):
        progress += f" of {planned:g} s"
    return f"{progress}, {info['message']}" if info.get("message") else progress


def _seconds_since(moment: datetime | None) -> str:
    # Whole seconds: what a person reads while waiting. Never negative, whatever the hosts' clocks say.
    seconds = max(0, int((timezone.now() - moment).total_seconds())) if moment else 0
    return f"{seconds} s"


def task_detail(task: Task) -> str:
    """What a task's detail says: why it waits while pending, where it is while processing, its outcome
    once it has one."""
    return waiting_reason(task) or stage_progress(task) or task.detail


def recent_tasks_for_model(embedding_model_id: str, limit: int) -> list[Task]:
    """The model's latest ``limit`` tasks of both kinds, newest first: the latest of each kind by its
    (embedding_model_id, kind, sequence, attempt) index, merged (two seeks, however long the history);
    a pending one with why it waits (``task_detail``)."""
    latest = [
        task
        for kind in TaskKind.values
        for task in with_waiting_reason(Task.objects.filter(embedding_model_id=embedding_model_id, kind=kind)).order_by(
            "-sequence", "-attempt"
        )[:limit]
    ]
    return sorted(latest, key=lambda task: task.created_at, reverse=True)[:limit]


class AmbiguousShortId(LookupError):
    """A short task id that begins more than one task's id; ``task_ids`` names some of them."""

    def __init__(self, prefix: str, task_ids: list[str]):
        self.prefix, self.task_ids = prefix, task_ids
        super().__init__(f"{prefix!r} begins more than one task id: {', '.join(task_ids)}")


def task_by_short_id(prefix: str) -> Task | None:
    """The task with that id, or the one task whose id begins with it (the 8 characters the admin shows of
    a generated id).

    Raises AmbiguousShortId when several ids begin with it. A prefix seek on the primary key's index, as
    the admin's search does (``_id_starts_with``).
    """
    if task := find_task(prefix):
        return task
    matches = list(Task.objects.filter(_id_starts_with(prefix)).order_by("pk")[:SHORT_ID_CANDIDATES])
    if len(matches) > 1:
        raise AmbiguousShortId(prefix, [task.pk for task in matches])
    return matches[0] if matches else None


def newer_attempt(task: Task) -> Task | None:
    """The attempt that retried ``task`` (by a user or the sweeper), if it was retried."""
    return task.retries.order_by("attempt", "created_at").first()


def attempts_of(task: Task) -> list[Task]:
    """Every attempt of the request ``task`` belongs to, first to latest (a task is retried at most once,
    so the attempts form one chain through retry_of); one query per attempt."""
    chain = [task]
    while chain[0].retry_of_id and (earlier := find_task(chain[0].retry_of_id)) is not None:
        chain.insert(0, earlier)
    while (later := newer_attempt(chain[-1])) is not None:
        chain.append(later)
    return chain


def task_events(task: Task) -> QuerySet:
    return task.events.order_by("id")


def _unfinished_tasks_of(embedding_model_id: str) -> QuerySet[Task]:
    # Served by the partial (embedding_model_id, sequence, attempt) index of unfinished tasks.
    return Task.objects.filter(embedding_model_id=embedding_model_id, status__in=ACTIVE_STATUSES)


def earlier_unfinished_task_exists(task: Task) -> bool:
    """True while a task of the same model submitted before ``task`` is pending or processing."""
    return _unfinished_tasks_of(task.embedding_model_id).filter(sequence__lt=task.sequence).exists()


def head_task_for_model(embedding_model_id: str) -> Task | None:
    """The unfinished task of the model that was submitted first: the only one allowed to run next."""
    return _unfinished_tasks_of(embedding_model_id).order_by("sequence", "attempt").first()


def models_with_pending_tasks() -> set[str]:
    return set(Task.objects.filter(status=TaskStatus.PENDING).values_list("embedding_model_id", flat=True).distinct())


def processing_tasks() -> list[Task]:
    return list(Task.objects.filter(status=TaskStatus.PROCESSING))


def get_lease(embedding_model_id: str) -> ModelLease | None:
    return ModelLease.objects.filter(pk=embedding_model_id).first()


def expired_leases() -> list[ModelLease]:
    """Held leases whose holder stopped renewing them, by the database's clock."""
    return list(ModelLease.objects.exclude(owner="").filter(expires_at__lt=Now()))


def leases_held_by_process(host: str, pid: int) -> list[ModelLease]:
    """The leases signed by process ``pid`` of ``host`` (an owner reads "host:pid:nonce", see
    ``services.leases.new_lease_owner``)."""
    return list(ModelLease.objects.filter(owner__startswith=f"{host}:{pid}:"))


def with_open_drift(models: QuerySet[EmbeddingModel]) -> QuerySet[EmbeddingModel]:
    """Each model with ``open_drifts``: its unresolved drift, if any (one extra query per page)."""
    return models.prefetch_related(
        Prefetch("drifts", queryset=Drift.objects.filter(resolved_at__isnull=True), to_attr="open_drifts")
    )


def get_embedding_model(embedding_model_id: str) -> EmbeddingModel | None:
    return with_open_drift(EmbeddingModel.objects.filter(pk=embedding_model_id)).first()


def list_embedding_models() -> QuerySet[EmbeddingModel]:
    return with_open_drift(EmbeddingModel.objects.order_by("id"))


def inference_servers() -> QuerySet[InferenceServer]:
    return InferenceServer.objects.order_by("url")


# -- Inference replicas: serving, empty or down -----------------------------------------------------

REPLICA_SERVING = "serving"
REPLICA_EMPTY = "empty"  # answers, but serves none of the live revisions (just restarted, say)
REPLICA_DOWN = "down"  # does not answer
REPLICA_UNCHECKED = "not checked yet"  # configured; the reconciler has not recorded it yet


@dataclass(frozen=True)
class ReplicaHealth:
    url: str
    state: str  # one of the REPLICA_ states
    why: str  # down: what went wrong; otherwise how many of the live revisions it serves

    @property
    def serving(self) -> bool:
        return self.state == REPLICA_SERVING


def live_served_names() -> set[str]:
    """The names the deployed models' live revisions are served under (``<model id>~<revision>``), one query."""
    deployed = EmbeddingModel.objects.filter(state=EmbeddingModel.State.DEPLOYED).exclude(live_revision="")
    return {served_name(pk, revision) for pk, revision in deployed.values_list("pk", "live_revision")}


def replica_health(url: str, ready: Collection[str] | None, error: str, live_names: Collection[str]) -> ReplicaHealth:
    """How one replica stands, from what it has ready (None: it did not answer, ``error`` says why): the one
    rule /readyz and the admin's dashboard judge by. A replica that serves some of the live revisions is
    serving (the reconciler loads the rest); one that serves none while there are some is empty."""
    if ready is None:
        return ReplicaHealth(url, REPLICA_DOWN, error or "it did not answer")
    served = len(set(ready) & set(live_names))
    state = REPLICA_EMPTY if live_names and not served else REPLICA_SERVING
    return ReplicaHealth(url, state, f"serves {served} of the {len(live_names)} live revision(s)")


def recorded_replica_health(urls: Sequence[str]) -> list[tuple[ReplicaHealth, datetime | None]]:
    """Each configured replica as the reconciler last saw it (``InferenceServer``), with when; two queries."""
    recorded = {server.url: server for server in InferenceServer.objects.filter(url__in=list(urls))}
    live_names = live_served_names()
    health = []
    for url in urls:
        if (server := recorded.get(url)) is None:
            health.append((ReplicaHealth(url, REPLICA_UNCHECKED, "the reconciler has not looked at it yet"), None))
            continue
        ready = server.loaded if server.live else None
        health.append((replica_health(url, ready, server.error, live_names), server.checked_at))
    return health


# -- Memory: what each replica holds, by the revisions' recorded footprints ---------------------


@dataclass(frozen=True)
class ReplicaMemory:
    """One replica's memory as the control plane counts it: the footprints of the revisions it has
    loaded, plus those reserved by deploys still running (they load on every replica)."""

    budget_bytes: int
    held: dict[str, int]  # served name -> bytes, loaded or reserved
    unrecorded: tuple[str, ...] = ()  # loaded names with no footprint on record (not counted)

    @property
    def used_bytes(self) -> int:
        return sum(self.held.values())

    @property
    def free_bytes(self) -> int:
        return max(self.budget_bytes - self.used_bytes, 0)


def revision_footprints(names: Iterable[str]) -> dict[str, int]:
    """The recorded footprint of each of these served names that has one."""
    return dict(ModelRevision.objects.filter(name__in=set(names)).values_list("name", "memory_bytes"))


def replica_memory(
    loaded: Mapping[str, Iterable[str] | None], ended_since: datetime | None = None
) -> dict[str, ReplicaMemory]:
    """Each replica's memory from the names it has loaded (replica URL -> names; None: did not answer),
    against REPLICA_MEMORY_BYTES. One query, however many replicas and revisions.

    Reserved are the revisions of deploys still running and, with ``ended_since``, of those that ended
    since then: what they loaded may be missing from names read at that moment.
    """
    loaded_names = {url: set(names or ()) for url, names in loaded.items()}
    every = set().union(*loaded_names.values())
    reserving = Q(loading_task__status=TaskStatus.PROCESSING)
    if ended_since is not None:
        reserving |= Q(loading_task__finished_at__gte=ended_since)
    rows = ModelRevision.objects.filter(Q(name__in=every) | reserving).annotate(
        reserved=Case(When(reserving, then=Value(True)), default=Value(False))
    )
    footprints: dict[str, int] = {}
    reserved: dict[str, int] = {}
    for name, memory_bytes, is_reserved in rows.values_list("name", "memory_bytes", "reserved"):
        footprints[name] = memory_bytes
        if is_reserved:
            reserved[name] = memory_bytes
    memory = {}
    for url, names in loaded_names.items():
        held = {name: footprints[name] for name in names if name in footprints}
        held |= {name: size for name, size in reserved.items() if name not in names}
        unrecorded = tuple(sorted(name for name in names if name not in footprints))
        memory[url] = ReplicaMemory(settings.REPLICA_MEMORY_BYTES, held, unrecorded)
    return memory


def servers_memory(servers: Iterable[InferenceServer]) -> dict[str, ReplicaMemory]:
    """``replica_memory`` of inference servers as the reconciler last saw them (a down one holds nothing)."""
    return replica_memory({server.url: server.loaded if server.live else () for server in servers})


def open_drifts() -> QuerySet[Drift]:
    """Models the server does not serve as the registry says, oldest first."""
    return Drift.objects.filter(resolved_at__isnull=True).order_by("detected_at")


# -- Operators: the admin's lists and dashboard, the management commands ----------------------


def _latest_task_subquery(kind: str, column: str) -> Subquery:
    latest = Task.objects.filter(embedding_model_id=OuterRef("pk"), kind=kind).order_by("-sequence", "-attempt")
    return Subquery(latest.values(column)[:1])


def with_latest_tasks(models: QuerySet[EmbeddingModel]) -> QuerySet[EmbeddingModel]:
    """Each model with the id and status of its latest deployment and deletion task, in the same query
    (each column is one seek on the (embedding_model_id, kind, sequence, attempt) index)."""
    return models.annotate(
        latest_deployment_id=_latest_task_subquery(TaskKind.DEPLOYMENT, "pk"),
        latest_deployment_status=_latest_task_subquery(TaskKind.DEPLOYMENT, "status"),
        latest_deletion_id=_latest_task_subquery(TaskKind.DELETION, "pk"),
        latest_deletion_status=_latest_task_subquery(TaskKind.DELETION, "status"),
    )


def deployed_models(*, with_drift: bool = False, with_lease: bool = False) -> list[EmbeddingModel]:
    """The models the registry says are live, in id order (one query); ``with_drift``: each with its
    ``open_drifts`` (one query more, not one per model); ``with_lease``: each with ``lease_held`` (someone
    holds its lease and renews it) and ``lease_generation`` (its lease's takes so far), in the same query."""
    models = EmbeddingModel.objects.filter(state=EmbeddingModel.State.DEPLOYED).order_by("pk")
    if with_lease:
        lease = ModelLease.objects.filter(pk=OuterRef("pk"))
        models = models.annotate(
            lease_held=Exists(lease.filter(expires_at__gt=Now()).exclude(owner="")),
            lease_generation=Coalesce(Subquery(lease.values("generation")[:1]), Value(0)),
        )
    return list(with_open_drift(models) if with_drift else models)


def embedding_model_ids(*, states: Sequence[str] | None = None, limit: int | None = None) -> list[str]:
    """Registered model ids in id order, optionally only those in the given states, at most ``limit``."""
    models = EmbeddingModel.objects.all()
    if states:
        models = models.filter(state__in=states)
    return list(models.order_by("pk").values_list("pk", flat=True)[:limit])


def tasks_by_ids(task_ids: Sequence[str]) -> list[Task]:
    tasks: list[Task] = []
    for start in range(0, len(task_ids), 500):
        tasks.extend(Task.objects.filter(pk__in=task_ids[start : start + 500]))
    return tasks


# The dashboard looks for unresolved failures among this many latest failures: a bounded read, however
# many failures history holds (an older one is still in the task lists' status filter).
FAILURES_SCANNED = 200


def unresolved_failures(limit: int) -> list[Task]:
    """The latest failed or refused tasks that nothing has made good since: no later task of the same kind
    for the same model (its retry, or a new request) has ended done. A retry still on its way is named
    (``retry_id``, ``retry_status``), so the operator sees the failure is being dealt with.

    Looks among the latest FAILURES_SCANNED failures (the (status, created_at) index); each one's "made
    good" check is a range seek on the (model, status, sequence, attempt) index from its own position.
    """
    failed = [TaskStatus.FAILED, TaskStatus.REFUSED]
    latest = Task.objects.filter(status__in=failed).order_by("-created_at").values("pk")[:FAILURES_SCANNED]
    done_later = Task.objects.filter(
        embedding_model_id=OuterRef("embedding_model_id"),
        status=TaskStatus.DONE,
        sequence__gte=OuterRef("sequence"),
        kind=OuterRef("kind"),
    ).filter(Q(sequence__gt=OuterRef("sequence")) | Q(attempt__gt=OuterRef("attempt")))
    retry = Task.objects.filter(retry_of=OuterRef("pk")).order_by("-attempt")
    failures = (
        Task.objects.filter(pk__in=Subquery(latest))
        .filter(~Exists(done_later))
        .annotate(retry_id=Subquery(retry.values("pk")[:1]), retry_status=Subquery(retry.values("status")[:1]))
        .order_by("-created_at")
    )
    return list(failures[:limit])


def filter_tasks(
    *,
    kinds: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    embedding_model_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Task]:
    """Tasks, newest first, narrowed by kind, status, model and creation time."""
    tasks = Task.objects.all()
    if kinds:
        tasks = tasks.filter(kind__in=kinds)
    if statuses:
        tasks = tasks.filter(status__in=statuses)
    if embedding_model_id:
        tasks = tasks.filter(embedding_model_id=embedding_model_id)
    if created_after:
        tasks = tasks.filter(created_at__gte=created_after)
    if created_before:
        tasks = tasks.filter(created_at__lt=created_before)
    return tasks.order_by("-created_at")


# Model ids a partial model id, and task ids the start of an id, may stand for: past these, the operator's
# term is too vague to help (type more of it).
MAX_MODELS_MATCHED = 500
MAX_TASKS_MATCHED = 1000


def model_ids_containing(part: str) -> list[str]:
    """Registered model ids containing ``part`` (any case). The registry is small, so ``icontains`` reads
    few rows; the task table is then read by its model index, never scanned for a substring."""
    models = EmbeddingModel.objects.filter(pk__icontains=part).order_by("pk")
    return list(models.values_list("pk", flat=True)[:MAX_MODELS_MATCHED])


def search_tasks(
    tasks: QuerySet[Task], *, task_id_prefix: str | None = None, model_id_part: str | None = None
) -> QuerySet[Task]:
    """Narrow ``tasks`` as operators name them: by the start of the id (the 8 characters the admin and the
    commands show, or the whole id) and by part of the model id. The admin's search and ``manage.py tasks``
    both go through here.

    The ids a prefix stands for are looked up first, on the key alone, and the list then narrowed to
    them: filtered as part of the list's own query (with its kind and order), SQLite walked the kind's
    index instead, 0.4 s with a million tasks. A model id part matches the registered models containing
    it, or when none does, a model id as a whole (the tasks of a model no longer registered): the task
    table is then read by its model index.
    """
    if task_id_prefix:
        matching = Task.objects.filter(_id_starts_with(task_id_prefix)).order_by("pk").values_list("pk", flat=True)
        tasks = tasks.filter(pk__in=list(matching[:MAX_TASKS_MATCHED]))
    if model_id_part:
        tasks = tasks.filter(embedding_model_id__in=model_ids_containing(model_id_part) or [model_id_part])
    return tasks


# Above every character a task id may hold (they are ASCII): "<prefix><this>" ends the prefix's range.
_PAST_ANY_ID_CHARACTER = "\U0010ffff"


def _id_starts_with(prefix: str) -> Q:
    """Ids starting with ``prefix``, as an index seek on either database, case as stored.

    PostgreSQL serves ``LIKE 'x%'`` from the primary key's pattern index (Django makes one for text keys;
    ``istartswith`` would upper-case the column and scan). SQLite's LIKE ignores case, so it never uses
    the key's index; there the prefix is a range of the key instead (byte order, which for ASCII ids is
    exactly "starts with"). A range is not used on PostgreSQL, where a linguistic collation does not
    sort by prefix.
    """
    if connection.vendor == "sqlite":
        return Q(pk__gte=prefix, pk__lt=prefix + _PAST_ANY_ID_CHARACTER)
    return Q(pk__startswith=prefix)


def latest_attempts(tasks: QuerySet[Task]) -> QuerySet[Task]:
    """Only tasks that have not been retried yet (no newer attempt links to them)."""
    return tasks.filter(~Exists(Task.objects.filter(retry_of=OuterRef("pk"))))


# -- The audit trail ---------------------------------------------------------------------------------


def audit_entries(
    *,
    embedding_model_id: str | None = None,
    task_id: str | None = None,
    actions: Sequence[str] | None = None,
    via: Sequence[str] | None = None,
) -> QuerySet[AuditEntry]:
    """Audit entries, newest first: a model's (its registry entries and its tasks'), or one task's (with
    the retry that made it, when it is a retried attempt: who asked for it)."""
    entries = AuditEntry.objects.all()
    if embedding_model_id:
        entries = entries.filter(embedding_model_id=embedding_model_id)
    if task_id:
        # The retry is recorded on the task retried, naming the attempt it made (a task is retried once).
        retried = Subquery(Task.objects.filter(pk=task_id).values("retry_of_id")[:1])
        made_it = Q(object_id=retried, action=AuditEntry.Action.RETRY, changes__retried_as=task_id)
        entries = entries.filter(Q(object_id=task_id) | made_it, object_kind__in=TaskKind.values)
    if actions:
        entries = entries.filter(action__in=actions)
    if via:
        entries = entries.filter(via__in=via)
    return entries.order_by("-at", "-id")


# -- The task engine's own health: worker clusters, their events, tasks waiting for a worker ----------


def running_clusters(supervisor_seen_since: datetime) -> list[WorkerCluster]:
    """The clusters whose supervisor has neither stopped nor gone silent (it stamps its row every period)."""
    return list(
        WorkerCluster.objects.filter(stopped_at__isnull=True, supervisor_seen_at__gte=supervisor_seen_since).order_by(
            "started_at"
        )
    )


def get_cluster(name: str) -> WorkerCluster | None:
    return WorkerCluster.objects.filter(name=name).first()


def recent_engine_events(limit: int = 50) -> list[EngineEvent]:
    return list(EngineEvent.objects.select_related("cluster").order_by("-created_at", "-id")[:limit])


def pids_running_live_tasks(host: str) -> set[int]:
    """Pids on ``host`` that run a processing task under a model lease they keep renewing (unexpired by
    the database's clock, as leases are judged). A lease owner reads "host:pid:nonce"
    (``services.leases.new_lease_owner``).
    """
    live_lease = ModelLease.objects.filter(
        pk=OuterRef("embedding_model_id"), owner=OuterRef("lease_owner"), expires_at__gt=Now()
    )
    owners = (
        Task.objects.filter(status=TaskStatus.PROCESSING, lease_owner__startswith=f"{host}:")
        .filter(Exists(live_lease))
        .values_list("lease_owner", flat=True)
    )
    pids = set()
    for owner in owners:
        pid = owner.removeprefix(f"{host}:").split(":", 1)[0]
        if pid.isdigit():
            pids.add(int(pid))
    return pids


def longest_waiting_task() -> tuple[Task, datetime] | None:
    """The task first in its model's queue that has waited longest to start, and since when it waits.

    A task queued behind an earlier one of its model is not waiting for a worker; it starts waiting
    when it becomes first: when it was created, or when the task ahead of it finished.
    """
    earlier_unfinished = Task.objects.filter(
        embedding_model_id=OuterRef("embedding_model_id"), status__in=ACTIVE_STATUSES, sequence__lt=OuterRef("sequence")
    )
    ahead_finished = (
        Task.objects.filter(
            embedding_model_id=OuterRef("embedding_model_id"),
            sequence__lt=OuterRef("sequence"),
            finished_at__isnull=False,
        )
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    task = (
        Task.objects.filter(status=TaskStatus.PENDING)
        .filter(~Exists(earlier_unfinished))
        .annotate(waiting_since=Greatest("created_at", Coalesce(Subquery(ahead_finished), "created_at")))
        .order_by("waiting_since")
        .first()
    )
    return (task, task.waiting_since) if task else None


# -- /metrics: what the control plane holds right now, read at scrape time ----------------------


@dataclass(frozen=True)
class ControlPlaneState:
    """The database's answer to a scrape: counts and the moments ages are measured from."""

    tasks: dict[tuple[str, str], int]  # (kind, status) -> tasks
    oldest_pending_created_at: datetime | None
    lease_expiries: dict[str, datetime]  # embedding model id -> when its held lease expires
    clusters: list[WorkerCluster]  # running (not stopped) worker clusters
    open_drifts: int
    models_by_state: dict[str, int]
    replica_memory: dict[str, ReplicaMemory]  # inference server URL -> its memory


def control_plane_state() -> ControlPlaneState:
    """Eight short queries, each an index seek or one grouped scan, whatever the history's size."""
    tasks = {
        (row["kind"], row["status"]): row["n"]
        for row in Task.objects.order_by().values("kind", "status").annotate(n=Count("pk"))
    }
    oldest_pending = Task.objects.filter(status=TaskStatus.PENDING).aggregate(oldest=Min("created_at"))["oldest"]
    lease_expiries = dict(
        ModelLease.objects.exclude(owner="")
        .filter(expires_at__isnull=False)
        .values_list("embedding_model_id", "expires_at")
    )
    clusters = list(WorkerCluster.objects.filter(stopped_at__isnull=True).order_by("name"))
    models_by_state = {
        row["state"]: row["n"] for row in EmbeddingModel.objects.order_by().values("state").annotate(n=Count("pk"))
    }
    return ControlPlaneState(
        tasks=tasks,
        oldest_pending_created_at=oldest_pending,
        lease_expiries=lease_expiries,
        clusters=clusters,
        open_drifts=Drift.objects.filter(resolved_at__isnull=True).count(),
        models_by_state=models_by_state,
        replica_memory=servers_memory(inference_servers()),
    )
