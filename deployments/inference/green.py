"""Green deploys and deletes, stage by stage, across a fleet of V2 replicas behind a router.

Blue is the revision a model's URL serves now; green is the new one. Each revision is loaded under
its own name, ``<id>~<revision>``, so green is loaded once on every replica, beside blue, and
proven on each replica directly. Then one route update sends the model's URL to green on every
replica at the same instant (no replica answers from another revision after it), and green bakes
while blue stays loaded: a failure in the bake puts the route back on blue, which takes
milliseconds. Only then is blue unloaded everywhere. At most two revisions of a model are loaded
on a replica at any time. Anything that fails before the switch leaves blue serving as it was,
and every stage is idempotent, so running a deploy again after a crash converges.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .client import DEFAULT_TIMEOUT, DEFAULT_UNLOAD_TIMEOUT, V2Client
from .errors import (
    ChecksumMismatch,
    DeployFailed,
    FenceLost,
    InferenceError,
    InvalidArtifacts,
    InvalidModelId,
    ServerUnavailable,
    SourceRefused,
)
from .fleet import Fleet, FleetView
from .ids import served_name, validate_model_id, validate_revision
from .repository import ModelRepository, Revision
from .sources import ModelSource, open_source

DEPLOY_STAGES = ("validate", "fetch", "load_green", "smoke_test", "switch", "bake", "retire_blue", "done")
DELETE_STAGES = ("validate", "unroute", "unload", "remove", "done")

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models turn text into vectors.",
    "ok",
)
# How often the bake probes each replica and reads the router's failure counters.
BAKE_PROBE_INTERVAL = 0.5
# How long the router may take to answer from a revision once its route is published.
SWITCH_CONFIRM_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 10.0


def deploy_time_bound(
    ready_timeout: float,
    bake_seconds: float = 0.0,
    call_timeout: float = DEFAULT_TIMEOUT,
    unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT,
) -> float:
    """The longest a deploy can spend waiting on the fleet, every call at its bound (fetch, a copy on
    local disk, comes on top). validate: a readiness probe; load_green: unload leftovers, then load
    and wait for ready within one ready_timeout; smoke_test: an infer; switch: a publish and a
    confirming call; bake: bake_seconds, and a publish if it rolls back; retire_blue: a publish and
    an unload. Replicas are worked on in parallel."""
    return 4 * call_timeout + 2 * unload_timeout + ready_timeout + bake_seconds + 4 * PUBLISH_TIMEOUT


@dataclass(frozen=True)
class StageEvent:
    """One step of a procedure's timeline: a stage started, finished, or failed."""

    stage: str
    state: str  # "started" | "done" | "failed"
    message: str = ""
    duration_s: float | None = None
    planned_s: float | None = None  # on "started": how long the stage is meant to last, when known (the bake)


ProgressCallback = Callable[[StageEvent], None]
# Asked during the bake with blue's revision: a reason to roll back to it now (an operator asked for
# it), or None.
RollbackRequest = Callable[[str], "str | None"]
# Asked just before green loads, with green's revision (its files in the repository) and the replicas it
# will load on: a reason they cannot hold it (the deploy is refused at load_green), or None to go on.
# The control plane plans each replica's memory here.
AdmitGreen = Callable[[Revision, list[str]], "str | None"]
# Told the moment a route update moves the model's URL (the switch; a switch or a bake rolled back) which
# revision answers there now (None: nothing) and, for green, the dimensions its smoke test measured (None
# for blue: the caller knew them already). The control plane's registry follows the route with it.
RouteMoved = Callable[[str | None, "int | None"], None]
# Raises FenceLost when the caller's attempt no longer owns the model; called before every stage and write.
Guard = Callable[[], None]


def _unguarded() -> None:
    pass


# The calls that change the fleet or the repository: each one is preceded by the guard.
FLEET_WRITES = frozenset({"load", "unload", "publish"})
REPOSITORY_WRITES = frozenset(
    {"create_revision", "write_settings", "remove_settings", "set_live", "prune", "remove_model"}
)


class _Fenced:
    """The wrapped client or repository, with the guard called before each of its writes."""

    def __init__(self, target: Any, guard: Guard, writes: frozenset[str]):
        self._target = target
        self._guard = guard
        self._writes = writes

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._writes:
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._guard()
            return attribute(*args, **kwargs)

        return guarded


@dataclass
class DeployResult:
    model_id: str
    revision: str
    previous_revision: str | None
    endpoint: str
    dimensions: int
    memory_bytes: int | None = None  # what the loaded revision holds on a replica (its runtime's count)
    replicas: list[str] = field(default_factory=list)  # the replicas that serve the revision
    skipped_replicas: list[str] = field(default_factory=list)  # did not answer; the reconciler catches them up
    switch_ms: float | None = None  # the deployer's route update until Envoy serves it
    source: dict[str, str] = field(default_factory=dict)  # the URI fetched and what it resolved to (a commit)
    timings: dict[str, float] = field(default_factory=dict)
    pruned_revisions: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "previous_revision": self.previous_revision,
            "endpoint": self.endpoint,
            "dimensions": self.dimensions,
            "memory_bytes": self.memory_bytes,
            "replicas": self.replicas,
            "skipped_replicas": self.skipped_replicas,
            "switch_ms": self.switch_ms,
            "source": self.source,
            "timings": self.timings,
            "pruned_revisions": self.pruned_revisions,
        }


@dataclass
class DeleteResult:
    model_id: str
    was_deployed: bool
    unloaded: list[str] = field(default_factory=list)
    removed_revisions: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "was_deployed": self.was_deployed,
            "unloaded": self.unloaded,
            "removed_revisions": self.removed_revisions,
            "timings": self.timings,
        }


class _Timeline:
    """Reports each stage through the callback and keeps its duration."""

    def __init__(self, progress: ProgressCallback | None, guard: Guard = _unguarded):
        self.progress = progress or (lambda event: None)
        self.guard = guard
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, message: str = "", planned_s: float | None = None) -> Iterator[list[str]]:
        """Run a stage; the body may append a closing message to the yielded list.

        A failure is reported under the stage it happened in, whatever raised it; only a lost
        fence is not reported (a superseded attempt writes nothing, not even its timeline).
        """
        self.guard()
        self.progress(StageEvent(name, "started", message, planned_s=planned_s))
        started = time.perf_counter()
        closing: list[str] = []
        try:
            yield closing
        except FenceLost:
            raise
        except DeployFailed as exc:
            self._finish(name, "failed", exc.reason, started)
            raise
        except SourceRefused as exc:
            # At fetch: a registry that names nothing is refused; artifacts that are not a whole model fail
            # (once the source's files are fixed, the same request succeeds).
            self._finish(name, "failed", str(exc), started)
            raise DeployFailed(name, str(exc), refused=not isinstance(exc, InvalidArtifacts)) from exc
        except InferenceError as exc:
            self._finish(name, "failed", str(exc), started)
            raise DeployFailed(name, str(exc)) from exc
        except Exception as exc:
            self._finish(name, "failed", f"unexpected error: {exc!r}", started)
            raise
        self._finish(name, "done", " ".join(closing), started)

    def _finish(self, name: str, state: str, message: str, started: float) -> None:
        duration = round(time.perf_counter() - started, 4)
        self.timings[name] = duration
        self.progress(StageEvent(name, state, message, duration))


class GreenDeployer:
    """Deploys and deletes models on a fleet of V2 replicas whose shared model repository it writes."""

    def __init__(
        self,
        fleet: Fleet,
        repository: ModelRepository,
        allowed_roots: Sequence[Path | str],
        ready_timeout: float = 300.0,
        bake_seconds: float = 0.0,
        probe_texts: Sequence[str] = PROBE_TEXTS,
    ):
        self.fleet = fleet
        self.repository = repository
        self.allowed_roots = [Path(root) for root in allowed_roots]
        self.ready_timeout = ready_timeout
        self.bake_seconds = bake_seconds
        self.probe_texts = list(probe_texts)
        self.guard: Guard = _unguarded

    def close(self) -> None:
        self.fleet.close()

    def endpoint(self, model_id: str) -> str:
        return f"{self.fleet.base_url}/v2/models/{model_id}/infer"

    def live_revision(self, model_id: str) -> str | None:
        """The revision the model's URL is meant to serve (the repository's word)."""
        return self.repository.live_revision(model_id)

    def served_revision(self, model_id: str) -> str | None:
        """The revision that answers at the model's URL now, through the router, or None."""
        metadata = self.fleet.front.model_metadata(validate_model_id(model_id))
        return (metadata or {}).get("parameters", {}).get("revision") if metadata else None

    def fenced(self, guard: Guard) -> GreenDeployer:
        """This deployer with ``guard`` called before every write to the fleet or the repository."""
        fenced = copy.copy(self)
        fenced.fleet = _Fenced(self.fleet, guard, FLEET_WRITES)
        fenced.repository = _Fenced(self.repository, guard, REPOSITORY_WRITES)
        fenced.guard = guard
        return fenced

    # -- keeping the fleet on the live revision ---------------------------------------------------

    def out_of_step(self, model_id: str, view: FleetView | None = None) -> str | None:
        """What differs between the live revision and what the fleet serves, or None when nothing does."""
        view = view or self.fleet.view()
        live = self.live_revision(model_id)
        if live is None:
            return None
        name = served_name(model_id, live)
        if missing := view.missing(name):
            return f"revision {live} is not ready on {', '.join(missing)}"
        routed = view.routed.get(model_id)
        if self.fleet.routes.admin_url and routed != name:
            return f"the router sends {model_id} to {routed or 'nothing'}, not to {name}"
        return None

    def restore(self, model_id: str, view: FleetView | None = None, publish: bool = True) -> str | None:
        """Load the live revision on every answering replica that lacks it (one restarted, or one that
        joined), after re-verifying its checksums, then publish the routes: those replicas rejoin the
        revision's cluster. Returns the live revision, or None when the model has none. Idempotent.

        ``view``: the caller's look at the fleet, so restoring many models asks the replicas once;
        ``publish=False``: the caller publishes once after restoring them all.
        """
        revision = self.live_revision(model_id)
        if revision is None:
            return None
        name = served_name(model_id, revision)
        missing = (view or FleetView(ready=self.fleet.ready_names())).missing(name)
        try:
            if missing:
                self.repository.verify(self.repository.revision_path(model_id, revision))
                self.repository.write_settings(model_id, revision)
                if failures := self.fleet.load(name, self.ready_timeout, missing):
                    raise DeployFailed("restore", _by_replica(failures))
            if publish:
                self.fleet.publish(self.repository, timeout=PUBLISH_TIMEOUT)
        except DeployFailed:
            raise
        except InferenceError as exc:
            raise DeployFailed("restore", str(exc)) from exc
        return revision

    # -- deploy ------------------------------------------------------------------------------

    def deploy(
        self,
        model_id: str,
        source_uri: str,
        *,
        expected_dimensions: int | None = None,
        revision: str | None = None,
        bake_seconds: float | None = None,
        progress: ProgressCallback | None = None,
        rollback_requested: RollbackRequest | None = None,
        tracking_uri: str | None = None,
        admit: AdmitGreen | None = None,
        routed: RouteMoved | None = None,
    ) -> DeployResult:
        """Deploy ``source_uri`` (or, with ``revision``, a revision the repository keeps: a rollback,
        nothing is fetched) as ``model_id``. Raises DeployFailed (``.stage``, ``.reason``) on failure.

        ``admit`` is asked just before green loads whether the replicas can hold it; a reason it
        returns refuses the deploy at ``load_green``, before anything is loaded.

        ``rollback_requested`` is asked during the bake: a reason it returns rolls the route back to
        blue at once, as a failure would (a rollback asked for during a bake is only a switch).

        ``routed`` is told each time the model's URL moves to another revision, right after the route
        update, so whoever records what is live never lags the router.

        On a fenced deployer a lost fence raises FenceLost before the next stage or write, and
        nothing more is done.
        """
        timeline = _Timeline(progress, self.guard)
        bake = self.bake_seconds if bake_seconds is None else bake_seconds

        with timeline.stage("validate") as closing:
            source = self._validate(model_id, source_uri, revision, expected_dimensions, bake, tracking_uri)
            ready = self.fleet.ready_replicas()
            replicas = [url for url, up in ready.items() if up]
            skipped = [url for url, up in ready.items() if not up]
            if not replicas:
                raise DeployFailed("validate", f"no inference replica is ready ({', '.join(skipped)})")
            origin = f"source {source.uri}" if source else f"kept revision {revision}"
            closing.append(f"{origin}; {len(replicas)} replica(s) ready")
            if skipped:
                closing.append(f"({', '.join(skipped)} not answering: left to the reconciler)")

        with timeline.stage("fetch", origin) as closing:
            green = self._fetch(model_id, source, revision)
            closing.append(
                f"revision {green.revision}: {green.files} files, {green.size_bytes:,} bytes of artifacts, verified"
            )
            if source is None:
                closing.append("(kept, not fetched again)")
            elif source.resolved:
                closing.append("from " + ", ".join(f"{key} {value}" for key, value in source.resolved.items()))

        blue = self.live_revision(model_id)
        name = served_name(model_id, green.revision)
        try:
            with timeline.stage("load_green", f"loading {name} on {len(replicas)} replica(s)") as closing:
                fits = (lambda: admit(green, replicas)) if admit else None
                loaded = self._load_green(model_id, green.revision, blue, replicas, fits)
                closing.append(f"ready on {len(replicas)} replica(s)" + ("" if loaded else " (was loaded)"))
            with timeline.stage("smoke_test") as closing:
                dimensions, memory_bytes = self._smoke_test_each(name, green.revision, expected_dimensions, replicas)
                closing.append(f"{len(self.probe_texts)} probes on each replica, {dimensions} dimensions, finite")
                if memory_bytes is not None:
                    closing.append(f"({memory_bytes:,} bytes loaded)")
            with timeline.stage("switch", f"{blue or 'nothing'} -> {green.revision}") as closing:
                switch_ms = self._switch(model_id, green.revision, blue, routed, dimensions)
                closing.append(f"the router answers from {green.revision} after {switch_ms:.1f} ms")
        except BaseException:
            # Whatever stopped us before the route moved (a failed check, a bug, the worker being
            # stopped): blue still serves; leave no green behind. A superseded attempt's guard skips this.
            if green.revision != blue:
                with suppress(FenceLost, InferenceError):
                    self._retire(model_id, green.revision)
            raise

        kept_loaded = f"blue {blue} kept loaded" if blue else "no blue to keep loaded"
        with timeline.stage("bake", kept_loaded, planned_s=bake) as closing:
            if green.revision == blue:
                closing.append("the revision was live already: nothing to bake")
            else:
                self._bake(model_id, green.revision, blue, bake, replicas, rollback_requested, routed)
                closing.append("no failure seen" if bake else "no bake asked for")

        with timeline.stage("retire_blue") as closing:
            if blue and blue != green.revision:
                self._retire(model_id, blue)
                closing.append(f"{served_name(model_id, blue)} unloaded everywhere")
            else:
                closing.append("no other revision was live")

        with timeline.stage("done") as closing:
            protect = {green.revision} | ({blue} if blue else set())
            pruned = self.repository.prune(model_id, protect=protect)
            if pruned:
                closing.append(f"pruned {len(pruned)} old revision(s)")

        return DeployResult(
            model_id=model_id,
            revision=green.revision,
            previous_revision=blue,
            endpoint=self.endpoint(model_id),
            dimensions=dimensions,
            memory_bytes=memory_bytes,
            replicas=replicas,
            skipped_replicas=skipped,
            switch_ms=switch_ms,
            source={"uri": source.uri, **source.resolved} if source else {},
            timings=timeline.timings,
            pruned_revisions=pruned,
        )

    def _validate(
        self,
        model_id: str,
        source_uri: str,
        revision: str | None,
        expected_dimensions: int | None,
        bake_seconds: float,
        tracking_uri: str | None = None,
    ) -> ModelSource | None:
        """Check the request; return the opened source (None when a kept revision is asked for)."""
        try:
            validate_model_id(model_id)
            source = None if revision is not None else open_source(source_uri, self.allowed_roots, tracking_uri)
            if revision is not None:
                validate_revision(revision)
        except (InvalidModelId, SourceRefused) as exc:
            raise DeployFailed("validate", str(exc), refused=True) from exc
        if revision is not None and not self.repository.revision_path(model_id, revision).is_dir():
            kept = ", ".join(self.repository.list_revisions(model_id)) or "none"
            raise DeployFailed(
                "validate", f"revision {revision} is not kept for {model_id} (kept: {kept})", refused=True
            )
        if expected_dimensions is not None and (not isinstance(expected_dimensions, int) or expected_dimensions <= 0):
            raise DeployFailed(
                "validate", f"expected_dimensions must be a positive integer, got {expected_dimensions!r}", refused=True
            )
        if not isinstance(bake_seconds, int | float) or bake_seconds < 0:
            raise DeployFailed("validate", f"bake_seconds must be a number >= 0, got {bake_seconds!r}", refused=True)
        return source

    def _fetch(self, model_id: str, source: ModelSource | None, revision: str | None) -> Revision:
        if source is not None:
            return self.repository.create_revision(model_id, source, before_publish=self.guard)
        assert revision is not None  # and kept: validate checked
        try:
            self.repository.verify(self.repository.revision_path(model_id, revision))
        except ChecksumMismatch as exc:
            raise DeployFailed("fetch", f"kept revision {revision} no longer verifies: {exc}") from exc
        return self.repository.kept_revision(model_id, revision)

    def _load_green(
        self,
        model_id: str,
        green: str,
        blue: str | None,
        replicas: list[str],
        fits: Callable[[], str | None] | None = None,
    ) -> bool:
        """Load green on the replicas (in parallel); False when every one already had it ready, or
        refused (DeployFailed) when ``fits`` says why the replicas cannot hold it."""
        # Revisions left by crashed or superseded attempts go first: with them loaded beside blue
        # and green, a replica would hold three revisions of the model or more.
        for leftover in set(self.repository.loadable_revisions(model_id)) - {green, blue}:
            self._retire(model_id, leftover)
        # Asked once the leftovers are gone (they free memory), before green takes any.
        if fits is not None and (refusal := fits()):
            raise DeployFailed("load_green", refusal, refused=True)
        name = served_name(model_id, green)
        self.repository.write_settings(model_id, green)
        ready = self.fleet.ready_names()
        # A replica of this deploy that stopped answering since validate is loaded too: its failure names it.
        missing = [url for url in replicas if name not in (ready.get(url) or ())]
        if failures := self.fleet.load(name, self.ready_timeout, missing):
            raise DeployFailed("load_green", f"{name} failed to load: {_by_replica(failures)}")
        # Envoy gets green's cluster now, while the route still leads to blue: the switch is then a route update.
        self.fleet.publish(self.repository, timeout=PUBLISH_TIMEOUT)
        return bool(missing)

    def _smoke_test_each(
        self, name: str, revision: str, expected_dimensions: int | None, replicas: list[str]
    ) -> tuple[int, int | None]:
        """A real inference on every replica directly; the first failure (naming its replica) fails the stage.
        Returns the dimensions and the most memory a replica says the revision holds (None: none said)."""
        results = self.fleet.on_each(
            lambda client: self._smoke_test(client, name, revision, expected_dimensions), replicas
        )
        failures = {url: _reason(result) for url, result in results.items() if isinstance(result, InferenceError)}
        if failures:
            raise DeployFailed("smoke_test", _by_replica(failures))
        answers = [result for result in results.values() if isinstance(result, tuple)]
        dimensions = {answer_dimensions for answer_dimensions, _ in answers}
        if len(dimensions) != 1:
            raise DeployFailed("smoke_test", f"replicas disagree on the dimensions: {sorted(dimensions)}")
        memory = [memory_bytes for _, memory_bytes in answers if memory_bytes is not None]
        return dimensions.pop(), max(memory, default=None)

    def _smoke_test(
        self, client: V2Client, name: str, revision: str, expected_dimensions: int | None
    ) -> tuple[int, int | None]:
        """Green's answer on one replica checked; its dimensions and the memory its runtime says it holds."""
        result = client.infer(name, self.probe_texts)
        vectors = result.embeddings
        if vectors.ndim != 2 or vectors.shape[0] != len(self.probe_texts):
            raise DeployFailed(
                "smoke_test",
                f"expected {len(self.probe_texts)} embeddings, got an array of shape {list(vectors.shape)}",
            )
        dimensions = int(vectors.shape[1])
        if expected_dimensions is not None and dimensions != expected_dimensions:
            raise DeployFailed(
                "smoke_test", f"expected {expected_dimensions} dimensions, the model returned {dimensions}"
            )
        if not np.isfinite(vectors).all():
            raise DeployFailed("smoke_test", "the model returned NaN or infinite values")
        if not (np.linalg.norm(vectors, axis=1) > 0).all():
            raise DeployFailed("smoke_test", "the model returned an all-zero embedding")
        answered_by = result.parameters.get("revision")
        if answered_by != revision:
            raise DeployFailed("smoke_test", f"{name} answered from revision {answered_by!r}, not {revision!r}")
        memory_bytes = result.parameters.get("memory_bytes")
        return dimensions, memory_bytes if isinstance(memory_bytes, int) else None

    def _switch(
        self,
        model_id: str,
        revision: str,
        previous: str | None,
        routed: RouteMoved | None = None,
        dimensions: int | None = None,
    ) -> float:
        """Point the model's URL at ``revision`` in one route update (green's cluster is already warm);
        return the ms until Envoy serves it, then confirm through Envoy by the revision that answers.
        If it does not answer from it, the route goes back to ``previous``. ``routed`` is told of each move
        (with ``dimensions``, green's, when it moves to ``revision``)."""
        try:
            switch_ms = self._route_to(model_id, revision)
            _tell(routed, revision, dimensions)
            deadline = time.monotonic() + SWITCH_CONFIRM_TIMEOUT
            while (answered := self._answers_from(model_id)) != revision:
                if time.monotonic() > deadline:
                    raise DeployFailed("switch", f"the router still answers from {answered!r}, not {revision!r}")
                time.sleep(0.005)
            return switch_ms
        except (DeployFailed, InferenceError):
            self._route_to(model_id, previous)
            _tell(routed, previous)
            raise

    def _answers_from(self, model_id: str) -> str | None:
        try:
            return self.fleet.front.infer(model_id, self.probe_texts[:1]).parameters.get("revision")
        except InferenceError:
            return None

    def _route_to(self, model_id: str, revision: str | None) -> float:
        """Point the model's URL at ``revision`` (None: unroute it), a route update alone (the revision's
        cluster is there); return the ms until Envoy's admin says it serves the new routes."""
        started = time.monotonic()
        self.repository.set_live(model_id, revision)
        self.fleet.publish(self.repository, timeout=PUBLISH_TIMEOUT, routes_only=True)
        return round((time.monotonic() - started) * 1000, 1)

    def _bake(
        self,
        model_id: str,
        green: str,
        blue: str | None,
        seconds: float,
        replicas: list[str],
        rollback_requested: RollbackRequest | None = None,
        routed: RouteMoved | None = None,
    ) -> None:
        """Watch green for ``seconds``: the router's 5xx count for it, and a probe on each replica. On
        the first failure (or a rollback asked for) the route goes back to blue (``routed`` is told) and
        green is retired: DeployFailed("bake")."""
        if seconds <= 0:
            return
        name = served_name(model_id, green)
        failures_before = self.fleet.route_failures(name)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(BAKE_PROBE_INTERVAL, remaining))
            self.guard()
            reason = rollback_requested(blue) if rollback_requested and blue else None
            reason = reason or self._bake_failure(name, green, replicas, failures_before)
            if reason is None:
                continue
            rollback_ms = self._route_to(model_id, blue)
            _tell(routed, blue)
            with suppress(InferenceError):
                self._retire(model_id, green)
            raise DeployFailed(
                "bake",
                f"rolled back: {reason}",
                metadata={"revision": green, "previous_revision": blue, "rollback_ms": rollback_ms},
            )

    def _bake_failure(self, name: str, revision: str, replicas: list[str], failures_before: int) -> str | None:
        failed = self.fleet.route_failures(name) - failures_before
        if failed > 0:
            return f"{failed} call(s) to {name} failed with a 5xx at the router"
        results = self.fleet.on_each(lambda client: self._smoke_test(client, name, revision, None), replicas)
        for url, result in results.items():
            # A replica that does not answer at all is down, not green's fault: the router retries
            # elsewhere and the reconciler brings it back. One that answers wrongly is green's fault.
            if isinstance(result, InferenceError) and not isinstance(result, ServerUnavailable):
                return f"replica {url}: {_reason(result)}"
        return None

    def _retire(self, model_id: str, revision: str) -> list[str]:
        """Make a revision unloadable, drop its cluster, then unload it from every replica."""
        name = served_name(model_id, revision)
        self.repository.remove_settings(model_id, revision)
        self.fleet.publish(self.repository, timeout=PUBLISH_TIMEOUT)
        return [url for url, was_loaded in self.fleet.unload(name).items() if was_loaded]

    # -- delete ------------------------------------------------------------------------------

    def delete(self, model_id: str, progress: ProgressCallback | None = None) -> DeleteResult:
        """Unroute ``model_id``, unload every revision of it, and remove them. Deleting an absent model is a no-op."""
        timeline = _Timeline(progress, self.guard)
        with timeline.stage("validate"):
            try:
                validate_model_id(model_id)
            except InvalidModelId as exc:
                raise DeployFailed("validate", str(exc), refused=True) from exc
        live = self.live_revision(model_id)
        result = DeleteResult(model_id=model_id, was_deployed=live is not None)
        with timeline.stage("unroute") as closing:
            if live is not None:
                self._route_to(model_id, None)
            closing.append(f"{model_id} answers 404 at the router" if live else "was not routed")
        with timeline.stage("unload") as closing:
            prefix = served_name(model_id, "")
            loaded = {name for names in self.fleet.ready_names().values() if names for name in names}
            revisions = set(self.repository.loadable_revisions(model_id))
            revisions |= {name.removeprefix(prefix) for name in loaded if name.startswith(prefix)}
            for revision in sorted(revisions):
                if self._retire(model_id, revision):
                    result.unloaded.append(served_name(model_id, revision))
            closing.append(", ".join(result.unloaded) or "nothing was loaded")
        with timeline.stage("remove") as closing:
            result.removed_revisions = self.repository.remove_model(model_id)
            closing.append(f"{len(result.removed_revisions)} revision(s) removed")
        with timeline.stage("done") as closing:
            if not (result.was_deployed or result.unloaded or result.removed_revisions):
                closing.append(f"{model_id} was not deployed; nothing to do")
        result.was_deployed = result.was_deployed or bool(result.unloaded)
        result.timings = timeline.timings
        return result


def _tell(routed: RouteMoved | None, revision: str | None, green_dimensions: int | None = None) -> None:
    if routed is not None:
        routed(revision, green_dimensions)


def _by_replica(failures: dict[str, str]) -> str:
    return "; ".join(f"replica {url}: {reason}" for url, reason in sorted(failures.items()))


def _reason(error: InferenceError) -> str:
    """What went wrong, without the stage a DeployFailed prefixes: the caller's own failure names it once."""
    return error.reason if isinstance(error, DeployFailed) else str(error)
