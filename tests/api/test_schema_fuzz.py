"""The OpenAPI schema is a contract a client generator can trust: every answer the API gives matches it.

Schemathesis reads /api/schema/ from the app in-process (WSGI), generates valid and invalid requests
for every operation and runs every check it has (its default) on each answer: no 5xx, every status code and header
documented, bodies and content types as documented, invalid input refused, valid input accepted.
No worker runs here: POST /deploy and /delete only create pending tasks (the ORM broker enqueues them
once the test transaction commits, which it never does).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from knox.models import AuthToken
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deployments.inference.packaged import packaged_model_dir, packaged_model_root
from deployments.models import EmbeddingModel, TaskStatus
from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory, UserFactory

pytestmark = pytest.mark.django_db

REGISTERED_MODEL = "all-minilm-l6-v2"  # the id the schema's examples use

# Loaded once at collection (the schema view reads no database). Not schemathesis.pytest.from_fixture:
# its lazy loader sets a pytest node attribute that pytest 9.2 no longer has.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
_fresh_ids = itertools.count()
# A valid request's ready_timeout and bake_seconds stay below this; together they fit TASK_TIMEOUT below.
FUZZ_MAX_SECONDS = 3600


def name_what_exists(case: schemathesis.Case) -> None:
    """Valid requests name what exists, as a real client's do: the schema cannot say which models are
    registered or which sources and tracking servers the server may read, so a valid request names the
    registered model, the packaged model's folder as source, no tracking server of its own and, to
    register, an id not taken yet (to change one, its own id). Invalid requests stay as generated."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    path, body = case.operation.path, case.body
    if path == "/models/{embedding_model_id}" and case.path_parameters:
        case.path_parameters["embedding_model_id"] = REGISTERED_MODEL
    if not isinstance(body, dict):
        return
    if path in ("/deploy", "/delete"):
        for key in ("embedding_model_id", "model_id"):
            if key in body:
                body[key] = REGISTERED_MODEL
    if path.startswith("/models") and "source" in body:
        body["source"] = str(packaged_model_dir())
    if path.startswith("/models") and body.get("mlflow_tracking_uri"):
        body["mlflow_tracking_uri"] = ""  # nor which tracking servers the operator allowed: none named
    if path == "/models" and isinstance(body.get("id"), str):
        body["id"] = f"{body['id'][:100]}-{next(_fresh_ids)}"
    if path == "/models/{embedding_model_id}" and "id" in body:
        body["id"] = REGISTERED_MODEL  # a change names the model it changes: another id is a 400 (test_api)
    # Nor can it say that ready_timeout and bake_seconds share one bound, set by the server's TASK_TIMEOUT
    # (task_config; its 400 is tested in tests/engine/test_limits.py): a valid request asks for what fits.
    config = body.get("config")
    if path == "/deploy" and isinstance(config, dict):
        for key in ("ready_timeout", "bake_seconds"):
            if isinstance(config.get(key), int | float) and not isinstance(config[key], bool):
                config[key] = min(config[key], FUZZ_MAX_SECONDS)


@pytest.fixture(autouse=True)
def requests_keep_the_test_connection() -> Iterator[None]:
    """As Django's own test client does: a request must not close the connection holding the test's
    transaction (the handler closes it at the end of every request otherwise)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def operator_headers(operator, settings) -> dict[str, str]:
    """A token user who may create, cancel and retry tasks and change the registry."""
    settings.ALLOWED_SOURCE_ROOTS = [packaged_model_root()]
    # Any two values up to FUZZ_MAX_SECONDS together (the bound on their sum is tested in test_limits).
    settings.TASK_TIMEOUT = 10_000
    EmbeddingModelFactory(id=REGISTERED_MODEL)
    return {"Authorization": f"Token {AuthToken.objects.create(user=operator, expiry=None)[1]}"}


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_schema(case: schemathesis.Case, operator_headers: dict[str, str]) -> None:
    name_what_exists(case)
    case.call_and_validate(headers=operator_headers)


# -- answers the generator seldom reaches, held to the same schema ---------------------------------

CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def call(method: str, path: str, headers: dict[str, str] | None = None, **request: Any) -> Any:
    """Send one request as the schema describes it; fail unless the answer is documented."""
    case = schema[path][method].Case(**request)
    return case.call_and_validate(headers=headers, checks=CONFORMANCE)


def test_refusals_are_documented(operator_headers):
    reader_key = AuthToken.objects.create(user=UserFactory(username="reader"), expiry=None)[1]
    reader = {"Authorization": f"Token {reader_key}"}
    body = {"embedding_model_id": REGISTERED_MODEL}
    assert call("POST", "/deploy", body=body).status_code == 401
    assert call("POST", "/deploy", {"Authorization": "Token nope"}, body=body).status_code == 401
    assert call("POST", "/deploy", reader, body=body).status_code == 403
    assert call("POST", "/models", operator_headers, body="id=x", media_type="text/plain").status_code == 415
    assert call("GET", "/deploy", operator_headers, query={"status": "pending,nope"}).status_code == 400
    for page_size in ("0", "501", "ten"):
        response = call("GET", "/deploy", operator_headers, query={"page_size": page_size})
        assert (response.status_code, list(response.json()["errors"])) == (400, ["page_size"])
    assert call("GET", "/deploy", operator_headers, query={"page_size": "500"}).status_code == 200


def test_conflicts_are_documented_409s(operator_headers):
    task = {"embedding_model_id": REGISTERED_MODEL, "task_id": "1234"}
    assert call("POST", "/deploy", operator_headers, body=task).status_code == 202
    assert call("POST", "/delete", operator_headers, body=task).status_code == 409  # the id is a deploy's
    done = {"path_parameters": {"task_id": DeploymentTaskFactory(status=TaskStatus.DONE).pk}}
    assert call("POST", "/deploy/{task_id}/cancel", operator_headers, **done).status_code == 409
    failed = DeploymentTaskFactory(embedding_model_id=REGISTERED_MODEL, status=TaskStatus.FAILED)
    retry = {"path_parameters": {"task_id": failed.pk}}
    attempt = call("POST", "/deploy/{task_id}/retry", operator_headers, **retry)
    again = call("POST", "/deploy/{task_id}/retry", operator_headers, **retry)
    assert (attempt.status_code, again.status_code) == (202, 409)
    assert again.json()["retried_as"] == attempt.json()["task_id"]
    EmbeddingModel.objects.filter(pk=REGISTERED_MODEL).update(state=EmbeddingModel.State.DEPLOYED)
    model = {"path_parameters": {"embedding_model_id": REGISTERED_MODEL}}
    assert call("DELETE", "/models/{embedding_model_id}", operator_headers, **model).status_code == 409


def broker_down(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("broker unreachable")


@pytest.mark.django_db(transaction=True)
def test_a_refused_hand_off_is_a_documented_503(operator_headers, monkeypatch):
    failed = {"path_parameters": {"task_id": DeploymentTaskFactory(status=TaskStatus.FAILED).pk}}
    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)
    assert call("POST", "/deploy", operator_headers, body={"embedding_model_id": REGISTERED_MODEL}).status_code == 503
    assert call("POST", "/deploy/{task_id}/retry", operator_headers, **failed).status_code == 503
