"""Every error the API returns is JSON with a ``detail`` naming the problem (and ``errors`` per field)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from deployments.services import RetryRefused, TaskConflict, TaskHandOffFailed

logger = logging.getLogger(__name__)


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"

    @classmethod
    def from_service(cls, exc: TaskConflict) -> Conflict:
        if isinstance(exc, RetryRefused) and exc.newer_attempt is not None:
            # A second retry names the attempt the first one made, so the client can follow it.
            return cls({"detail": str(exc), "retried_as": str(exc.newer_attempt.pk)})
        return cls(str(exc))


class HandOffFailed(APIException):
    """The task exists and stays pending, but the queue refused it: come back after ``Retry-After``."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "hand_off_failed"

    def __init__(self, exc: TaskHandOffFailed):
        super().__init__({"detail": str(exc), "task_id": exc.task_ids[0]})
        self.wait = exc.retry_after  # DRF's exception handler turns ``wait`` into the Retry-After header


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # A body that cannot be read is a bad field like any other: the field is the body itself.
    if isinstance(exc, RequestDataTooBig):
        exc = ValidationError({"body": [f"request body is too large: {exc}"]})
    elif isinstance(exc, ParseError):  # malformed JSON, an empty or oversized body (parsers.py)
        exc = ValidationError({"body": [str(exc.detail)]})
    elif isinstance(exc, TaskConflict):
        exc = Conflict.from_service(exc)
    elif isinstance(exc, TaskHandOffFailed):
        exc = HandOffFailed(exc)
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view"), exc_info=exc)
        return Response({"detail": "internal error; the request was not carried out"}, status=500)
    if isinstance(exc, ValidationError):
        response.data = {"detail": _summarize(exc.detail), "errors": _as_field_errors(exc.detail)}
    elif not isinstance(response.data, dict):
        response.data = {"detail": response.data}
    return response


def _as_field_errors(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return detail
    return {"non_field_errors": detail if isinstance(detail, list) else [detail]}


def _summarize(detail: Any, prefix: str = "") -> str:
    """'config.ready_timeout: Ensure this value is less than or equal to 3600.' from nested DRF errors."""
    if isinstance(detail, dict):
        return "; ".join(
            _summarize(value, key if not prefix else f"{prefix}.{key}")
            if key != "non_field_errors"
            else _summarize(value, prefix)
            for key, value in detail.items()
        )
    if isinstance(detail, list):
        return "; ".join(_summarize(item, prefix) for item in detail)
    return f"{prefix}: {detail}" if prefix else str(detail)
