"""The audit trail: who created, canceled or retried a task, who registered, changed or unregistered a model.

The caller that knows who acts (an API view, an admin page, a management command) makes an ``Actor``
and passes it down as the ``requested_by`` / ``by`` argument the services already take; the service
where the action happens calls ``record`` in the same transaction as the change, so an entry exists
exactly when the change does. A plain string is still accepted there (the sweeper, tests, code calling
a service directly) and is recorded as that name, via ``system``.
"""

from __future__ import annotations

import getpass
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from deployments.models import AuditEntry, EmbeddingModel, Task

# What a registry entry lists as changed (old -> new): what a person may set on a model.
REGISTRY_FIELDS = ("name", "source", "mlflow_tracking_uri", "dimensions")

REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"


@dataclass(frozen=True)
class Actor:
    """Who acts, and through which door. ``str(actor)`` is its name, as tasks and timelines show it."""

    name: str
    via: str = AuditEntry.Via.SYSTEM
    user_id: int | None = None
    request_id: str = ""
    ip: str | None = None

    def __str__(self) -> str:
        return self.name


def as_actor(actor: Actor | str) -> Actor:
    return actor if isinstance(actor, Actor) else Actor(name=actor)


def actor_from_request(request: HttpRequest, via: str) -> Actor:
    """The logged-in user of an API or admin request, with the request's id and client address.

    The address is the connection's (REMOTE_ADDR): a proxy in front has to pass the client's on.
    """
    remote_addr = request.META.get("REMOTE_ADDR") or ""
    user = request.user
    authenticated = bool(user and user.is_authenticated)
    return Actor(
        name=user.get_username() if authenticated else "anonymous",
        via=via,
        user_id=user.pk if authenticated else None,
        request_id=request.META.get(REQUEST_ID_HEADER, "")[: AuditEntry._meta.get_field("request_id").max_length],
        ip=remote_addr if _is_ip_address(remote_addr) else None,
    )


def _is_ip_address(value: str) -> bool:
    # A server on a Unix socket has no peer address (REMOTE_ADDR is empty or a path); PostgreSQL's
    # inet column would refuse it, and with it the change being recorded.
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def command_actor(command_name: str) -> Actor:
    """A management command has no logged-in user: it is named with the OS user that ran it."""
    try:
        os_user = getpass.getuser()
    except Exception:  # no user name in some containers
        os_user = "unknown"
    return Actor(name=f"command:{command_name} (os user: {os_user})", via=AuditEntry.Via.COMMAND)


def registry_values(model: EmbeddingModel) -> dict[str, Any]:
    # A blank optional field (no tracking URI of its own) is no value: registering it records no change.
    return {field_name: getattr(model, field_name) or None for field_name in REGISTRY_FIELDS}


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{"field": [old, new]}`` for each field whose value differs; a field missing on one side is None."""
    names = list(dict.fromkeys([*before, *after]))
    return {name: [before.get(name), after.get(name)] for name in names if before.get(name) != after.get(name)}


def record(
    actor: Actor | str,
    action: str,
    *targets: Task | EmbeddingModel,
    changes: Mapping[str, Any] | None = None,
) -> list[AuditEntry]:
    """Write one entry per target (a task or a registered model), all in one insert.

    Call it inside the transaction that makes the change: then both are written, or neither.
    """
    actor = as_actor(actor)
    entries = [
        AuditEntry(
            actor=actor.name[: AuditEntry._meta.get_field("actor").max_length],
            user_id=actor.user_id,
            via=actor.via,
            action=action,
            object_kind=target.kind if isinstance(target, Task) else AuditEntry.ObjectKind.EMBEDDING_MODEL,
            object_id=str(target.pk),
            embedding_model_id=target.embedding_model_id if isinstance(target, Task) else str(target.pk),
            changes=dict(changes or {}),
            request_id=actor.request_id,
            ip=actor.ip,
        )
        for target in targets
    ]
    return AuditEntry.objects.bulk_create(entries, batch_size=500)
