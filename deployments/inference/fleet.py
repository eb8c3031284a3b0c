"""The fleet: the inference replicas, and the router (Envoy) that is the one address clients call.

Every replica reads the same model repository. The fleet loads and unloads names on the replicas
(in parallel, with a bound) and publishes the router's table from two sources: the repository
says which revision each model's URL serves (``live.json``) and which revisions are loadable; the
replicas say which of those they have ready. A revision's cluster is exactly the replicas that
have it ready, so a replica that restarted empty or has not loaded a revision yet gets no traffic
for it until it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from .client import DEFAULT_TIMEOUT, V2Client
from .errors import InferenceError, ServerUnavailable
from .ids import served_name
from .repository import ModelRepository
from .router import ModelRoute, RouteTable, route_counters, served_routes

T = TypeVar("T")
DEFAULT_LOAD_PARALLELISM = 4


def replica_address(url: str) -> str:
    """``host:port`` of a replica's URL: how the router's clusters name it."""
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


@dataclass
class FleetView:
    """One look at the fleet: what each replica has ready (None: it did not answer), what the router routes."""

    ready: dict[str, set[str] | None] = field(default_factory=dict)  # replica URL -> ready names
    routed: dict[str, str] = field(default_factory=dict)  # model id -> served name

    def missing(self, name: str) -> list[str]:
        """Replicas that answer but do not have ``name`` ready."""
        return [url for url, names in self.ready.items() if names is not None and name not in names]

    def down(self) -> list[str]:
        return [url for url, names in self.ready.items() if names is None]


class Fleet:
    """The replicas (V2 clients) and the route table of the Envoy in front of them."""

    def __init__(
        self,
        front_url: str,
        replica_urls: Sequence[str],
        routes: RouteTable,
        timeout: float = DEFAULT_TIMEOUT,
        load_parallelism: int = DEFAULT_LOAD_PARALLELISM,
    ):
        if not replica_urls:
            raise InferenceError("the fleet needs at least one replica")
        self.front = V2Client(front_url, timeout=timeout)
        self.replicas = {url.rstrip("/"): V2Client(url, timeout=timeout) for url in replica_urls}
        self.routes = routes
        self.load_parallelism = max(1, load_parallelism)

    def close(self) -> None:
        self.front.close()
        for client in self.replicas.values():
            client.close()

    @property
    def base_url(self) -> str:
        return self.front.base_url

    # -- calls on every replica ----------------------------------------------------------------

    def on_each(
        self, call: Callable[[V2Client], T], urls: Iterable[str] | None = None
    ) -> dict[str, T | InferenceError]:
        """``call`` on each replica (all of them by default), at most ``load_parallelism`` at a time.

        A replica's InferenceError is its result, so one replica's failure never hides another's.
        """
        targets = list(self.replicas if urls is None else urls)

        def guarded(url: str) -> T | InferenceError:
            try:
                return call(self.replicas[url])
            except InferenceError as exc:
                return exc

        if len(targets) <= 1:
            return {url: guarded(url) for url in targets}
        with ThreadPoolExecutor(max_workers=min(len(targets), self.load_parallelism)) as pool:
            return dict(zip(targets, pool.map(guarded, targets), strict=True))

    def ready_replicas(self) -> dict[str, bool]:
        """Which replicas answer, so may take a deploy. Asked by liveness: MLServer's own readiness is false
        while any model loads, so another model's deploy would take a busy replica for a dead one."""
        return {url: result is True for url, result in self.on_each(lambda client: client.server_live()).items()}

    def load(self, name: str, ready_timeout: float, urls: Iterable[str] | None = None) -> dict[str, str]:
        """Load ``name`` on the replicas and wait until it is ready on each; return the failures by replica."""

        def load_one(client: V2Client) -> None:
            client.load(name, timeout=ready_timeout)
            if not client.model_ready(name):
                raise InferenceError(f"{name} is not ready after loading")

        results = self.on_each(load_one, urls)
        return {url: str(result) for url, result in results.items() if isinstance(result, InferenceError)}

    def unload(self, name: str, urls: Iterable[str] | None = None) -> dict[str, bool]:
        """Unload ``name`` from the replicas; return which had it loaded.

        A replica that does not answer has nothing loaded when it comes back (replicas load nothing
        at start), so it counts as done; any other failure is raised.
        """
        unloaded: dict[str, bool] = {}
        for url, result in self.on_each(lambda client: client.unload(name), urls).items():
            if isinstance(result, ServerUnavailable):
                unloaded[url] = False
            elif isinstance(result, InferenceError):
                raise InferenceError(f"replica {url}: {result}")
            else:
                unloaded[url] = result
        return unloaded

    # -- what is where --------------------------------------------------------------------------

    def ready_each(self) -> dict[str, set[str] | InferenceError]:
        """What each replica has ready, or why it did not say: one repository index per replica."""

        def ready(client: V2Client) -> set[str]:
            return {entry["name"] for entry in client.index() if entry.get("state") == "READY"}

        return self.on_each(ready)

    def ready_names(self) -> dict[str, set[str] | None]:
        """What each replica has ready (None: it did not answer): one repository index per replica."""
        return {url: None if isinstance(names, InferenceError) else names for url, names in self.ready_each().items()}

    def view(self, ready: dict[str, set[str] | None] | None = None) -> FleetView:
        """What each replica has ready (``ready`` when the caller has just asked) and what the router
        routes (one admin call): a whole reconcile cycle decides from this one look."""
        ready = self.ready_names() if ready is None else ready
        routed = served_routes(self.routes.admin_url).served_names if self.routes.admin_url else {}
        return FleetView(ready=ready, routed=routed)

    def route_failures(self, name: str) -> int:
        """Calls routed to ``name`` that a replica answered with a 5xx, counted by the router."""
        if not self.routes.admin_url:
            return 0
        return route_counters(self.routes.admin_url, name)["upstream_rq_5xx"]

    # -- the router -----------------------------------------------------------------------------

    def publish(self, repository: ModelRepository, timeout: float = 10.0, routes_only: bool = False) -> str:
        """Publish the whole route table as the repository and the replicas say it is now.

        Under the table's lock, so concurrent publishers (other workers, the reconciler) serialise
        and the last one carries every change. ``routes_only`` keeps the clusters Envoy has and asks
        no replica: a rollback to a revision whose cluster is still there is a route update alone.
        """
        with self.routes.locked():
            if routes_only:
                clusters = dict(self.routes.published_clusters())
            else:
                ready = self.ready_names()
                clusters = {}
                for model_id in repository.model_ids():
                    for revision in repository.loadable_revisions(model_id):
                        name = served_name(model_id, revision)
                        ready_on = [url for url, names in ready.items() if names and name in names]
                        clusters[name] = tuple(replica_address(url) for url in ready_on)
            routes = []
            for model_id in repository.model_ids():
                live = repository.live_revision(model_id)
                if live and served_name(model_id, live) in clusters:
                    routes.append(ModelRoute(model_id, served_name(model_id, live)))
            return self.routes.publish(routes, clusters, timeout=timeout, replicas=self.addresses())

    def addresses(self) -> list[str]:
        """Every replica as the router's clusters name it ("host:port")."""
        return [replica_address(url) for url in self.replicas]

    def router_knows_every_replica(self) -> bool:
        """Whether the router's fleet (which answers the server endpoints) is exactly these replicas: a
        router that started with no table, or a changed list of replicas, needs a publish."""
        return self.routes.published_fleet() == tuple(sorted(self.addresses()))
