"""The config keys a task accepts, checked by one set of rules for the API, the admin and the commands.

The rules are DRF serializers so the API can nest them (and document them in its schema);
``validate_config`` is how everything else applies them.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deployments.inference import InvalidModelId, deploy_time_bound
from deployments.inference.ids import REVISION_PATTERN, validate_revision


class InvalidTaskConfig(ValueError):
    """A config that breaks the rules; ``problems`` maps each key to what is wrong with it."""

    def __init__(self, problems: dict[str, list[str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {' '.join(errors)}" for key, errors in problems.items()))


class StrictIntegerField(serializers.IntegerField):
    """An integer given as a JSON number: "384" and 384.5 and true are mistakes, not 384."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictNumberField(serializers.FloatField):
    """A finite number given as a JSON number (NaN and Infinity, which Python's JSON reader takes, are not)."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "pattern": REVISION_PATTERN, "example": "5d41402abc4b7a2f"})
class RevisionField(serializers.CharField):
    """A revision id, documented with its pattern (the serializer checks it with validate_revision)."""


class NoUnknownKeysMixin:
    """Reject keys the serializer does not know, naming them (a typo must not be silently ignored)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                allowed = ", ".join(sorted(self.fields)) or "none"
                raise serializers.ValidationError({key: [f"unknown key; allowed keys: {allowed}."] for key in unknown})
        return super().to_internal_value(data)


class DeploymentConfigSerializer(NoUnknownKeysMixin, serializers.Serializer):
    """Options of one deploy; each defaults to the server's setting."""

    expected_dimensions = StrictIntegerField(
        min_value=1,
        max_value=65536,
        required=False,
        help_text="Refuse the new revision unless its embeddings have exactly this many dimensions.",
    )
    # No fixed maximum: the real one depends on TASK_TIMEOUT and the other key (see validate).
    ready_timeout = StrictNumberField(
        min_value=1,
        required=False,
        help_text="Seconds to wait for green to load and become ready (default INFERENCE_READY_TIMEOUT). With "
        "bake_seconds a deploy must stay below the worker timeout (TASK_TIMEOUT), else the config is a 400 "
        "naming the largest value that fits.",
    )

    bake_seconds = StrictNumberField(
        min_value=0,
        required=False,
        help_text="Seconds the new revision is watched after the switch, blue still loaded, before blue is "
        "unloaded; a failure meanwhile rolls the route back (default INFERENCE_BAKE_SECONDS).",
    )
    revision = RevisionField(
        required=False,
        help_text="Deploy this revision the repository keeps (a rollback) instead of fetching the source again.",
    )

    def validate_revision(self, value: str) -> str:
        try:
            return validate_revision(value)
        except InvalidModelId as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Past TASK_TIMEOUT django-q2 kills the worker; the deploy must give up on its own first.
        ready = attrs.get("ready_timeout", settings.INFERENCE_READY_TIMEOUT)
        bake = attrs.get("bake_seconds", settings.INFERENCE_BAKE_SECONDS)
        if deploy_time_bound(ready, bake) < settings.TASK_TIMEOUT:
            return attrs
        # Name the key that was asked for (ready_timeout when both were and it alone does not fit) and the
        # largest value of it that fits, given the other.
        blame_ready = "bake_seconds" not in attrs or (
            "ready_timeout" in attrs and deploy_time_bound(ready, 0) >= settings.TASK_TIMEOUT
        )
        key, value, other, other_value = (
            ("ready_timeout", ready, "bake_seconds", bake)
            if blame_ready
            else ("bake_seconds", bake, "ready_timeout", ready)
        )
        fixed = deploy_time_bound(0, 0)
        limit = settings.TASK_TIMEOUT - fixed - other_value
        raise serializers.ValidationError(
            {
                key: f"{value:g} is too long: it must be below {limit:g} here ({other}={other_value:g}), because the "
                f"task must finish within TASK_TIMEOUT={settings.TASK_TIMEOUT}s and a deploy may wait "
                f"ready_timeout + bake_seconds + {fixed:g}s on the fleet."
            }
        )


class DeletionConfigSerializer(NoUnknownKeysMixin, serializers.Serializer):
    """Deletions take no options today; the key exists so the request shape is the same."""


CONFIG_SERIALIZERS: dict[str, type[serializers.Serializer]] = {
    "deployment": DeploymentConfigSerializer,
    "deletion": DeletionConfigSerializer,
}


def validate_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config of a ``kind`` task ("deployment" or "deletion"), validated; raises InvalidTaskConfig."""
    serializer = CONFIG_SERIALIZERS[kind](data=config)
    if not serializer.is_valid():
        raise InvalidTaskConfig({key: [str(error) for error in errors] for key, errors in serializer.errors.items()})
    return dict(serializer.validated_data)
