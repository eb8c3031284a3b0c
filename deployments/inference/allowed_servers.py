"""The MLflow servers and artifact stores a caller's string may make us call.

A model names its own tracking server (``mlflow_tracking_uri``), and the registry names where a
version's or a run's artifacts are. MLflow's client sends the credentials it reads from the
environment (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``) to whichever host
that is, so only hosts the operator trusts with them are called: ``MLFLOW_TRACKING_URI``'s server and
those listed in ``MLFLOW_ALLOWED_TRACKING_URIS`` (comma-separated), compared by origin (scheme,
lower-cased host, effective port).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress
from urllib.parse import urlsplit

from .errors import SourceRefused

ALLOW_LIST_VARIABLE = "MLFLOW_ALLOWED_TRACKING_URIS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A Databricks tracking URI names a profile of the local configuration, not a host: compared as written.
_DATABRICKS = "databricks"


def origin(uri: str) -> str:
    """``scheme://host[:port]`` of ``uri``: the scheme and host lower-cased, a default port left out, so
    two spellings of one server are one origin. ValueError saying why for a URI with a user or password
    in it (credentials come from the environment, never from a caller's string) or without a host."""
    uri = uri.strip()
    if _is_databricks(uri):
        return uri
    parsed = urlsplit(uri)
    scheme = parsed.scheme.lower()
    if "@" in parsed.netloc:
        raise ValueError(
            f"{without_credentials(uri)!r} holds a user or password: credentials come from the environment"
        )
    host = parsed.hostname  # lower-cased by urllib
    if not scheme or not host:
        raise ValueError(f"{uri!r} is not scheme://host[:port]")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{uri!r} has a port that is not a number from 0 to 65535") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return f"{scheme}://{netloc}"


def without_credentials(uri: str) -> str:
    """``uri`` as it may be shown and recorded: without a user or password (MLFLOW_TRACKING_URI may hold them)."""
    parsed = urlsplit(uri)
    if "@" not in parsed.netloc:
        return uri
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()


def credentials_removed(text: str, uri: str) -> str:
    """``text`` (an error that names ``uri``'s URLs) without the user and password ``uri`` holds."""
    userinfo = urlsplit(uri).netloc.rpartition("@")[0]
    return text.replace(f"{userinfo}@", "") if userinfo else text


def allow_list_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Why each malformed entry of MLFLOW_ALLOWED_TRACKING_URIS allows nothing (``manage.py check``)."""
    problems = []
    for entry in _listed(environ):
        try:
            origin(entry)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def allowed_origins(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The origins the operator allowed: MLFLOW_TRACKING_URI's first, then those listed (a malformed entry
    allows nothing; ``manage.py check`` names it)."""
    allowed: list[str] = []
    for entry in [environ.get("MLFLOW_TRACKING_URI", ""), *_listed(environ)]:
        try:
            server = origin(entry)
        except ValueError:
            continue  # a local store as MLFLOW_TRACKING_URI is allowed by name (check_tracking_server)
        if server not in allowed:
            allowed.append(server)
    return allowed


def tracking_server_refusal(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why ``tracking_uri`` may not be called, or None when the operator allowed it."""
    if tracking_uri.strip() == environ.get("MLFLOW_TRACKING_URI", "").strip():
        return None  # the operator's own setting, whatever its form (a local store has no host)
    allowed = allowed_origins(environ)
    try:
        server = origin(tracking_uri)
    except ValueError as exc:
        return f"{exc}; {_allowed_list(allowed)}"
    if server in allowed:
        return None
    return f"MLflow tracking server {server} is not allowed; {_allowed_list(allowed)}"


def check_tracking_server(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> None:
    """SourceRefused unless the operator allowed ``tracking_uri`` (before anything is sent to it)."""
    if refusal := tracking_server_refusal(tracking_uri, environ):
        raise SourceRefused(refusal)


def check_artifact_location(
    artifact_uri: str, tracking_uri: str, source_uri: str, environ: Mapping[str, str] = os.environ
) -> None:
    """SourceRefused unless the artifacts a registry names (data in the registry, not ours) are read
    from the tracking server itself, through its ``mlflow-artifacts:`` proxy, or from a store the
    operator allowed: never this machine's files, never a host the credentials were not meant for."""
    parsed = urlsplit(artifact_uri)
    scheme = parsed.scheme.lower()
    tracking = urlsplit(tracking_uri)
    if scheme == "mlflow-artifacts":
        if not parsed.netloc:
            return  # resolved by MLflow against the tracking server itself
        # MLflow sends the credentials to the host an mlflow-artifacts URI names, over the tracking scheme.
        location = f"{tracking.scheme}://{parsed.netloc}"
    elif scheme == "dbfs" and not parsed.netloc and _is_databricks(tracking_uri):
        return  # read through the workspace the tracking URI's profile names, with that profile's credentials
    elif parsed.netloc:
        location = artifact_uri
    else:
        where = "a path on this machine" if scheme in ("", "file") else "no host"
        raise SourceRefused(
            f"{source_uri}: its artifacts are at {artifact_uri!r}, {where}, not on the tracking server: "
            "serve them through it (mlflow server --serve-artifacts)"
        )
    try:
        server = origin(location)
    except ValueError as exc:
        raise SourceRefused(f"{source_uri}: its artifact location {exc}") from None
    allowed = allowed_origins(environ)
    with suppress(ValueError):  # a local store has no origin: only what is listed
        allowed.insert(0, origin(tracking_uri))
    if server not in allowed:
        raise SourceRefused(
            f"{source_uri}: its artifacts are at {artifact_uri!r}, on {server}, not on the tracking server; "
            f"{_allowed_list(allowed)}"
        )


def _is_databricks(uri: str) -> bool:
    return uri.strip().lower() == _DATABRICKS or urlsplit(uri.strip()).scheme.lower() == _DATABRICKS


def _listed(environ: Mapping[str, str]) -> list[str]:
    return [entry.strip() for entry in environ.get("MLFLOW_ALLOWED_TRACKING_URIS", "").split(",") if entry.strip()]


def _allowed_list(allowed: list[str]) -> str:
    servers = ", ".join(allowed) or "none (MLFLOW_TRACKING_URI is unset)"
    return f"allowed: {servers} (the operator adds servers to {ALLOW_LIST_VARIABLE})"
