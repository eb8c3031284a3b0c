"""The API: the six endpoints of the spec plus listing, cancel, retry, timelines and the model registry.

Views only translate HTTP to service and selector calls and back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from deployments import selectors, services
from deployments.api.pagination import AuditCursorPagination, ModelCursorPagination
from deployments.api.schema import TaskAutoSchema
from deployments.api.serializers import (
    AuditEntrySerializer,
    DeletionRequestSerializer,
    DeploymentRequestSerializer,
    EmbeddingModelSerializer,
    ErrorSerializer,
    InferenceServerSerializer,
    TaskEventSerializer,
    TaskRequestSerializer,
    TaskSerializer,
)
from deployments.inference import MAX_MODEL_ID_LENGTH, MODEL_ID_PATTERN, InvalidModelId, validate_model_id
from deployments.models import (
    AuditEntry,
    DeletionTask,
    DeploymentTask,
    EmbeddingModel,
    InferenceServer,
    Task,
    TaskStatus,
)
from deployments.services.audit import Actor, actor_from_request
from deployments.services.registry import RegistryError
from deployments.task_ids import TASK_ID_PATTERN, InvalidTaskId, validate_task_id


def _id_from_path(value: str, check: Callable[[str], str], invalid: type[Exception], field: str) -> str:
    """An id from the URL, held to the same rule as in a body: an unsafe one is a 400 naming the field."""
    try:
        return check(value)
    except invalid as exc:
        raise ValidationError({field: [str(exc)]}) from exc


def _model_id_from_path(value: str) -> str:
    return _id_from_path(value, validate_model_id, InvalidModelId, "embedding_model_id")


def _task_id_from_path(value: str) -> str:
    return _id_from_path(value, validate_task_id, InvalidTaskId, "task_id")


def _choices_from_query(request: Request, name: str, allowed: list[str]) -> list[str]:
    """``?name=a,b``: the values, each one of ``allowed``; an unknown one is a 400 naming the parameter."""
    values = [value for value in request.query_params.get(name, "").split(",") if value]
    if unknown := sorted(set(values) - set(allowed)):
        raise ValidationError({name: [f"unknown {name} {', '.join(unknown)}; one of {', '.join(allowed)}"]})
    return values


def api_actor(request: Request) -> Actor:
    """The caller as the audit trail names it: the token's (or session's) user, via the API."""
    return actor_from_request(request, AuditEntry.Via.API)


class TaskViewSet(viewsets.GenericViewSet):
    """Shared by deployments and deletions; subclasses name the task model and the submit service."""

    task_model: type[Task]
    request_serializer_class: type[TaskRequestSerializer]
    serializer_class = TaskSerializer
    schema = TaskAutoSchema()
    # cancel changes a task; retry creates one
    permission_verbs = {"create": "add", "retry": "add", "cancel": "change"}

    def get_queryset(self) -> QuerySet[Task]:
        return self.task_model.objects.all()

    def submit(self, **kwargs: Any) -> services.Submission:
        raise NotImplementedError

    def _get_task(self, task_id: str) -> Task:
        task = selectors.find_task(_task_id_from_path(task_id), kind=self.task_model.KIND, explain_waiting=True)
        if task is None:
            raise NotFound(f"no {self.task_model.KIND} task with id {task_id!r}")
        return task

    def create(self, request: Request) -> Response:
        serializer = self.request_serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            submission = self.submit(
                embedding_model_id=data["embedding_model_id"],
                config=data.get("config") or {},
                task_id=data.get("task_id"),
                requested_by=api_actor(request),
            )
        except services.ModelNotRegistered as exc:
            raise ValidationError({"embedding_model_id": [str(exc)]}) from exc
        code = status.HTTP_202_ACCEPTED if submission.created else status.HTTP_200_OK
        return Response(TaskSerializer(submission.task).data, status=code)

    def retrieve(self, request: Request, task_id: str) -> Response:
        return Response(TaskSerializer(self._get_task(task_id)).data)

    @action(detail=False, methods=["get"])
    def latest(self, request: Request, embedding_model_id: str) -> Response:
        model_id = _model_id_from_path(embedding_model_id)
        task = selectors.latest_task_for_model(self.task_model.KIND, model_id, explain_waiting=True)
        if task is None:
            raise NotFound(f"no {self.task_model.KIND} task for embedding model {model_id!r}")
        return Response(TaskSerializer(task).data)

    def list(self, request: Request) -> Response:
        model_id = request.query_params.get("embedding_model_id")
        if model_id is not None:
            model_id = _model_id_from_path(model_id)
        statuses = _choices_from_query(request, "status", TaskStatus.values)
        tasks = selectors.filter_tasks(kinds=[self.task_model.KIND], embedding_model_id=model_id, statuses=statuses)
        page = self.paginate_queryset(selectors.with_waiting_reason(tasks))
        return self.get_paginated_response(TaskSerializer(page, many=True).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, task_id: str) -> Response:
        task = services.cancel_task(self._get_task(task_id), by=api_actor(request))
        return Response(TaskSerializer(task).data)

    @action(detail=True, methods=["post"])
    def retry(self, request: Request, task_id: str) -> Response:
        try:
            task = services.retry_task(self._get_task(task_id), requested_by=api_actor(request))
        except services.ModelNotRegistered as exc:
            raise ValidationError({"embedding_model_id": [str(exc)]}) from exc
        return Response(TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["get"])
    def events(self, request: Request, task_id: str) -> Response:
        task = self._get_task(task_id)
        return Response(TaskEventSerializer(selectors.task_events(task), many=True).data)


# -- OpenAPI documentation -------------------------------------------------------------------

TASK_ID = OpenApiParameter(
    "task_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=TASK_ID_PATTERN,
    description="The task's id: the task_id its client chose, or the UUID the server gave it. "
    "An id that breaks the task id rule is a 400 naming task_id; an unknown one is a 404.",
    examples=[
        OpenApiExample("Chosen by the client", value="1234"),
        OpenApiExample("Given by the server", value="3f1c9a5e-8a47-4a53-9d7e-2b0c6f1e4d21"),
    ],
)
MODEL_ID_SCHEMA = {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": MAX_MODEL_ID_LENGTH}
MODEL_ID = OpenApiParameter(
    "embedding_model_id",
    MODEL_ID_SCHEMA,
    OpenApiParameter.PATH,
    description="The embedding model's id. An id that breaks the model id rule is a 400 naming embedding_model_id.",
)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


# What each error status means; every one has the body ErrorSerializer documents.
ERRORS = {
    400: _error("Bad input: detail sums it up, errors names each field with its problems."),
    401: _error("No credentials, or an unknown token; answered with WWW-Authenticate: Token."),
    403: _error("The user may read but lacks the permission this change needs (or a session without CSRF token)."),
    404: _error("No such task or model (detail names the id), or a page cursor the server did not give."),
    409: _error("Conflicts with the current state; detail says which."),
    415: _error("The body is not JSON: send Content-Type: application/json."),
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: ERRORS[code] for code in codes}


def comma_separated(name: str, values: list[str], description: str) -> OpenApiParameter:
    """A query parameter taking one or more of ``values``, comma-separated (``?status=pending,failed``)."""
    return OpenApiParameter(
        name, OpenApiTypes.STR, enum=values, many=True, style="form", explode=False, description=description
    )


RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[503],
    description="Seconds after which the sweeper sends the task again (TASK_HANDOFF_GRACE_SECONDS).",
)
HANDED_OFF_LATER = OpenApiResponse(
    {
        "type": "object",
        "properties": {"detail": {"type": "string"}, "task_id": {"type": "string"}},
        "required": ["detail", "task_id"],
    },
    description="The task was created and stays pending, but the task queue refused it; the sweeper sends it "
    "again after Retry-After seconds. Follow it with GET on its task_id; sending the same request again with "
    "that task_id answers 200 with it.",
)
RETRY_CONFLICT = OpenApiResponse(
    {
        "type": "object",
        "properties": {"detail": {"type": "string"}, "retried_as": {"type": "string"}},
        "required": ["detail"],
    },
    description="The task may not be retried: it has not finished, it is done (submit a new task instead), or it "
    "was retried already, and then retried_as names that newer attempt.",
)
TASK_EXAMPLE = {
    "task_id": "3f1c9a5e-8a47-4a53-9d7e-2b0c6f1e4d21",
    "embedding_model_id": "all-minilm-l6-v2",
    "status": "done",
    "detail": "revision 5d41402abc4b7a2f serves at http://127.0.0.1:8080/v2/models/all-minilm-l6-v2/infer",
    "metadata": {
        "attempt": 1,
        "retry_of": None,
        "revision": "5d41402abc4b7a2f",
        "previous_revision": None,
        "endpoint": "http://127.0.0.1:8080/v2/models/all-minilm-l6-v2/infer",
        "dimensions": 384,
        "replicas": ["http://127.0.0.1:8090"],
        "skipped_replicas": [],
        "switch_ms": 4.2,
        "timings": {
            "validate": 0.003,
            "fetch": 0.42,
            "load_green": 1.9,
            "smoke_test": 0.3,
            "switch": 0.01,
            "bake": 5.0,
            "retire_blue": 0.0,
            "done": 0.001,
        },
    },
    "created_at": "2025-01-01T12:00:00Z",
    "updated_at": "2025-01-01T12:00:03Z",
}


def _task_docs(kind: str, noun: str, request_serializer: type, spec_names: dict[str, str]) -> dict[str, Any]:
    request_examples = [
        OpenApiExample("By embedding_model_id", value={"embedding_model_id": "all-minilm-l6-v2"}, request_only=True),
        OpenApiExample("As in the spec (model_id)", value={"model_id": "123"}, request_only=True),
        OpenApiExample(
            "Idempotent, with a client task id",
            value={"embedding_model_id": "all-minilm-l6-v2", "task_id": "1234"},
            request_only=True,
        ),
    ]
    if kind == "deployment":
        request_examples.append(
            OpenApiExample(
                "With config",
                value={
                    "embedding_model_id": "all-minilm-l6-v2",
                    "config": {"expected_dimensions": 384, "ready_timeout": 120},
                },
                request_only=True,
            )
        )
    response_example = OpenApiExample("A task", value=TASK_EXAMPLE, response_only=True)
    tags = [f"{noun} tasks"]
    return {
        "create": extend_schema(
            operation_id=spec_names["create"],
            summary=f"Create a {kind} task",
            description=(
                f"Creates a {kind} task and hands it to a worker; poll it with its task_id. "
                "202 when created; 200 with the existing task when the same task_id comes again with the same "
                "model, kind and config. 400 for bad input or an unregistered model; 409 when that task_id "
                "names a task of another model, kind or config. 503 with Retry-After when the task was created "
                "but the task queue refused it: it stays pending and is sent again, nothing to resubmit."
            ),
            request=request_serializer,
            parameters=[RETRY_AFTER],
            responses={
                202: TaskSerializer,
                200: TaskSerializer,
                **error_responses(400, 401, 403, 409, 415),
                503: HANDED_OFF_LATER,
            },
            examples=[*request_examples, response_example],
            tags=tags,
        ),
        "retrieve": extend_schema(
            operation_id=spec_names["retrieve"],
            summary=f"Get a {kind} task",
            parameters=[TASK_ID],
            responses={200: TaskSerializer, **error_responses(400, 401, 404)},
            examples=[response_example],
            tags=tags,
        ),
        "latest": extend_schema(
            operation_id=spec_names["latest"],
            summary=f"Latest {kind} task of an embedding model",
            description=f"The most recently submitted {kind} task of the model (not the first one).",
            parameters=[MODEL_ID],
            responses={200: TaskSerializer, **error_responses(400, 401, 404)},
            examples=[response_example],
            tags=tags,
        ),
        "list": extend_schema(
            operation_id=f"list_{kind}_tasks",
            summary=f"List {kind} tasks, newest first",
            parameters=[
                OpenApiParameter("embedding_model_id", MODEL_ID_SCHEMA, description="Only this model's tasks."),
                comma_separated("status", TaskStatus.values, "Only tasks in these statuses, e.g. pending,processing."),
            ],
            responses={200: TaskSerializer(many=True), **error_responses(400, 401, 404)},
            tags=tags,
        ),
        "cancel": extend_schema(
            operation_id=f"cancel_{kind}_task",
            summary=f"Cancel a pending {kind} task",
            request=None,
            parameters=[TASK_ID],
            responses={200: TaskSerializer, **error_responses(400, 401, 403, 404, 409)},
            tags=tags,
        ),
        "retry": extend_schema(
            operation_id=f"retry_{kind}_task",
            summary=f"Retry a failed, refused or canceled {kind} task as a new attempt",
            description=(
                "Creates a new attempt linked to the task, at the back of the model's queue. Once per task: a "
                "second retry (or one of a task the sweeper already retried) is a 409 naming the newer attempt. "
                "A done task is not retried: submit a new task. 503 with Retry-After as for creating a task."
            ),
            request=None,
            parameters=[TASK_ID, RETRY_AFTER],
            responses={
                202: TaskSerializer,
                **error_responses(400, 401, 403, 404),
                409: RETRY_CONFLICT,
                503: HANDED_OFF_LATER,
            },
            tags=tags,
        ),
        "events": extend_schema(
            operation_id=f"{kind}_task_events",
            summary=f"Stage-by-stage timeline of a {kind} task",
            parameters=[TASK_ID],
            responses={200: TaskEventSerializer(many=True), **error_responses(400, 401, 404)},
            tags=tags,
        ),
    }


@extend_schema_view(
    **_task_docs(
        "deployment",
        "Deployment",
        DeploymentRequestSerializer,
        {"create": "deploy", "retrieve": "get_deploy_task", "latest": "get_model_deploy_status"},
    )
)
class DeploymentTaskViewSet(TaskViewSet):
    task_model = DeploymentTask
    request_serializer_class = DeploymentRequestSerializer

    def submit(self, **kwargs: Any) -> services.Submission:
        return services.submit_deployment(**kwargs)


@extend_schema_view(
    **_task_docs(
        "deletion",
        "Deletion",
        DeletionRequestSerializer,
        {"create": "delete", "retrieve": "get_delete_task", "latest": "get_model_delete_status"},
    )
)
class DeletionTaskViewSet(TaskViewSet):
    task_model = DeletionTask
    request_serializer_class = DeletionRequestSerializer

    def submit(self, **kwargs: Any) -> services.Submission:
        return services.submit_deletion(**kwargs)


ID_IS_FIXED = "The id never changes: an id in the body other than the path's is a 400 naming id (the same id is fine)."


@extend_schema_view(
    list=extend_schema(
        summary="List registered embedding models",
        responses={200: EmbeddingModelSerializer(many=True), **error_responses(401, 404)},
        tags=["Models"],
    ),
    create=extend_schema(
        summary="Register an embedding model",
        description="400 also when the id is registered already or the source is not under an allowed root.",
        responses={201: EmbeddingModelSerializer, **error_responses(400, 401, 403, 415)},
        tags=["Models"],
    ),
    retrieve=extend_schema(
        summary="Get an embedding model",
        parameters=[MODEL_ID],
        responses={200: EmbeddingModelSerializer, **error_responses(400, 401, 404)},
        tags=["Models"],
    ),
    partial_update=extend_schema(
        summary="Change name, source or dimensions",
        description=ID_IS_FIXED,
        parameters=[MODEL_ID],
        responses={200: EmbeddingModelSerializer, **error_responses(400, 401, 403, 404, 415)},
        tags=["Models"],
    ),
    update=extend_schema(
        summary="Replace name, source and dimensions",
        description=ID_IS_FIXED,
        parameters=[MODEL_ID],
        responses={200: EmbeddingModelSerializer, **error_responses(400, 401, 403, 404, 415)},
        tags=["Models"],
    ),
    destroy=extend_schema(
        summary="Unregister an embedding model (only when not deployed)",
        description="409 while the model is deployed or has unfinished tasks.",
        parameters=[MODEL_ID],
        responses={204: None, **error_responses(400, 401, 403, 404, 409)},
        tags=["Models"],
    ),
)
class EmbeddingModelViewSet(viewsets.ModelViewSet):
    serializer_class = EmbeddingModelSerializer
    pagination_class = ModelCursorPagination
    lookup_field = "pk"
    lookup_url_kwarg = "embedding_model_id"

    def get_queryset(self) -> QuerySet[EmbeddingModel]:
        return selectors.list_embedding_models()

    def get_object(self) -> EmbeddingModel:
        model_id = _model_id_from_path(self.kwargs["embedding_model_id"])
        model = selectors.get_embedding_model(model_id)
        if model is None:
            raise NotFound(f"no embedding model {model_id!r}")
        self.check_object_permissions(self.request, model)
        return model

    def perform_create(self, serializer: EmbeddingModelSerializer) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = services.register_model(
                data["id"],
                data["source"],
                name=data.get("name", ""),
                dimensions=data.get("dimensions"),
                mlflow_tracking_uri=data.get("mlflow_tracking_uri", ""),
                by=api_actor(self.request),
            )
        except RegistryError as exc:
            raise ValidationError({"id": [str(exc)]}) from exc

    def perform_update(self, serializer: EmbeddingModelSerializer) -> None:
        serializer.instance = services.update_model(
            serializer.instance, by=api_actor(self.request), **serializer.validated_data
        )

    def perform_destroy(self, instance: EmbeddingModel) -> None:
        services.unregister_model(instance, by=api_actor(self.request))


@extend_schema_view(
    list=extend_schema(
        summary="List the inference servers: does each answer, what has it loaded, its memory used and free",
        description="As the reconciler last saw them (INFERENCE_REPLICA_URLS), every few seconds.",
        responses={200: InferenceServerSerializer(many=True), **error_responses(401)},
        tags=["Servers"],
    )
)
class InferenceServerViewSet(viewsets.GenericViewSet):
    serializer_class = InferenceServerSerializer
    pagination_class = None  # a handful of servers

    def get_queryset(self) -> QuerySet[InferenceServer]:
        return selectors.inference_servers()

    def list(self, request: Request) -> Response:
        servers = list(self.get_queryset())
        memory = selectors.servers_memory(servers)
        for server in servers:
            server.memory = memory[server.url]
        return Response(InferenceServerSerializer(servers, many=True).data)


@extend_schema_view(
    list=extend_schema(
        operation_id="list_audit_entries",
        summary="The audit trail, newest first: who created, canceled or retried tasks and changed the registry",
        description="One entry per action on a task (create, cancel, retry) or a registered model (create, change "
        "with each field's old and new value, delete), naming the actor (a user, or a management command and the "
        "OS user that ran it) and how they acted (api, admin, command, or system for the sweeper's retries). "
        "Filter by model (its registry entries and its tasks'), by task, by action and by via.",
        parameters=[
            OpenApiParameter("embedding_model_id", MODEL_ID_SCHEMA, description="Only this model's entries."),
            OpenApiParameter(
                "task_id",
                {"type": "string", "pattern": TASK_ID_PATTERN},
                description="Only this task's entries, and the retry that made it when it is a retried attempt.",
            ),
            comma_separated("action", AuditEntry.Action.values, "Only these actions."),
            comma_separated("via", AuditEntry.Via.values, "Only entries made this way."),
        ],
        responses={200: AuditEntrySerializer(many=True), **error_responses(400, 401, 404)},
        tags=["Audit"],
    )
)
class AuditEntryViewSet(viewsets.GenericViewSet):
    serializer_class = AuditEntrySerializer
    pagination_class = AuditCursorPagination

    def get_queryset(self) -> QuerySet[AuditEntry]:
        return selectors.audit_entries()

    def list(self, request: Request) -> Response:
        model_id = request.query_params.get("embedding_model_id")
        task_id = request.query_params.get("task_id")
        entries = selectors.audit_entries(
            embedding_model_id=_model_id_from_path(model_id) if model_id is not None else None,
            task_id=_task_id_from_path(task_id) if task_id is not None else None,
            actions=_choices_from_query(request, "action", AuditEntry.Action.values),
            via=_choices_from_query(request, "via", AuditEntry.Via.values),
        )
        page = self.paginate_queryset(entries)
        return self.get_paginated_response(AuditEntrySerializer(page, many=True).data)
