"""How the OpenAPI schema is made where drf-spectacular cannot infer it from the serializers.

Imported by the views, which registers the extension below with drf-spectacular.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import force_instance

from deployments.api.serializers import TaskRequestSerializer
from deployments.task_config import NoUnknownKeysMixin


class StrictRequestSchema(OpenApiSerializerExtension):
    """Documents what NoUnknownKeysMixin enforces: a request body with a key it does not know is a 400."""

    target_class = NoUnknownKeysMixin
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
            if isinstance(force_instance(self.target), TaskRequestSerializer):
                # The model is named exactly once: by embedding_model_id or by its alias model_id.
                schema["oneOf"] = [{"required": ["embedding_model_id"]}, {"required": ["model_id"]}]
        return schema


class TaskAutoSchema(AutoSchema):
    """A task request's body is required: it names the model. drf-spectacular infers that only from
    required properties, and the model may come under either of two names (see StrictRequestSchema)."""

    def _get_request_body(self, direction: str = "request") -> dict[str, Any] | None:
        request_body = super()._get_request_body(direction)
        if request_body is not None:
            request_body["required"] = True
        return request_body
