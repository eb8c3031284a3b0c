"""Green deploys and deletes, stage by stage, against a V2 inference server.

Blue is what the model's stable name serves now; green is the new revision. Green is loaded
under a staging name, proven with a real inference call, unloaded again, and only then does the
stable name reload onto it: the server swaps the instance atomically, so traffic on the stable
name never sees an error. At most two instances of a model are loaded at any moment (blue plus
green during staging, old plus new during the swap). Anything that fails before promote leaves
blue exactly as it was. Each stage is idempotent, so running a deploy again after a crash at any
point converges on the same end state.
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
from .errors import DeployFailed, FenceLost, InferenceError, InvalidModelId, SourceRefused
from .ids import staging_name, validate_model_id
from .repository import STABLE, STAGING, ModelRepository, Revision
from .sources import open_source

DEPLOY_STAGES = ("validate", "fetch", "stage_green", "smoke_test", "retire_green", "promote", "done")
DELETE_STAGES = ("validate", "unload", "remove", "done")

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models turn text into vectors.",
    "ok",
)


def deploy_time_bound(
    ready_timeout: float, call_timeout: float = DEFAULT_TIMEOUT, unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT
) -> float:
    """The longest a deploy can spend waiting on the server, every call at its bound (fetch, a copy on
    local disk, comes on top). validate: a readiness probe; stage_green: unload a leftover green and
    ours, then load and wait for ready within one ready_timeout; smoke_test: an infer; retire_green:
    an unload; promote: a load and an infer, and when that fails the reload of blue."""
    return 3 * call_timeout + 3 * unload_timeout + 3 * ready_timeout


@dataclass(frozen=True)
class StageEvent:
    """One step of a procedure's timeline: a stage started, finished, or failed."""

    stage: str
    state: str  # "started" | "done" | "failed"
    message: str = ""
    duration_s: float | None = None


ProgressCallback = Callable[[StageEvent], None]
# Raises FenceLost when the caller's attempt no longer owns the model; called before every stage and write.
Guard = Callable[[], None]


def _unguarded() -> None:
    pass


# The calls that change the server or the repository: each one is preceded by the guard.
CLIENT_WRITES = frozenset({"load", "unload"})
REPOSITORY_WRITES = frozenset({"create_revision", "write_settings", "remove_settings", "prune", "remove_model"})


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
    timings: dict[str, float] = field(default_factory=dict)
    pruned_revisions: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "previous_revision": self.previous_revision,
            "endpoint": self.endpoint,
            "dimensions": self.dimensions,
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
    def stage(self, name: str, message: str = "") -> Iterator[list[str]]:
        """Run a stage; the body may append a closing message to the yielded list.

        A failure is reported under the stage it happened in, whatever raised it; only a lost
        fence is not reported (a superseded attempt writes nothing, not even its timeline).
        """
        self.guard()
        self.progress(StageEvent(name, "started", message))
        started = time.perf_counter()
        closing: list[str] = []
        try:
            yield closing
        except FenceLost:
            raise
        except DeployFailed as exc:
            self._finish(name, "failed", exc.reason, started)
            raise
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
    """Deploys and deletes models on one V2 server whose model repository it writes."""

    def __init__(
        self,
        client: V2Client,
        repository: ModelRepository,
        allowed_roots: Sequence[Path | str],
        ready_timeout: float = 300.0,
        probe_texts: Sequence[str] = PROBE_TEXTS,
    ):
        self.client = client
        self.repository = repository
        self.allowed_roots = [Path(root) for root in allowed_roots]
        self.ready_timeout = ready_timeout
        self.probe_texts = list(probe_texts)
        self.guard: Guard = _unguarded

    def endpoint(self, model_id: str) -> str:
        return f"{self.client.base_url}/v2/models/{model_id}/infer"

    def live_revision(self, model_id: str) -> str | None:
        """The revision the stable name is configured to serve (the model repository's word)."""
        return self.repository.settings_revision(model_id, STABLE)

    def served_revision(self, model_id: str) -> str | None:
        """The revision the server's stable name actually serves now (the server's word), or None."""
        metadata = self.client.model_metadata(validate_model_id(model_id))
        return (metadata or {}).get("parameters", {}).get("revision") if metadata else None

    def restore(self, model_id: str) -> str | None:
        """Make the server serve the live revision again if it does not (e.g. after it restarted).

        Loads only the stable name, from the settings already on disk, after re-verifying the
        revision's checksums. Returns the revision served, or None when the model has no live
        revision. Idempotent: a model already served is left alone.
        """
        revision = self.live_revision(model_id)
        if revision is None or self.served_revision(model_id) == revision:
            return revision
        try:
            self.repository.verify(self.repository.revision_path(model_id, revision))
            self.client.load(model_id, timeout=self.ready_timeout)
        except InferenceError as exc:
            raise DeployFailed("restore", str(exc)) from exc
        served = self.served_revision(model_id)
        if served != revision:
            raise DeployFailed("restore", f"{model_id} answers from revision {served!r}, not {revision!r}")
        return revision

    # -- deploy ------------------------------------------------------------------------------

    def fenced(self, guard: Guard) -> GreenDeployer:
        """This deployer with ``guard`` called before every write to the server or the repository."""
        fenced = copy.copy(self)
        fenced.client = _Fenced(self.client, guard, CLIENT_WRITES)
        fenced.repository = _Fenced(self.repository, guard, REPOSITORY_WRITES)
        fenced.guard = guard
        return fenced

    def deploy(
        self,
        model_id: str,
        source_uri: str,
        *,
        expected_dimensions: int | None = None,
        progress: ProgressCallback | None = None,
        attempt_tag: str = "",
    ) -> DeployResult:
        """Deploy ``source_uri`` as ``model_id``. Raises DeployFailed (``.stage``, ``.reason``) on failure.

        ``attempt_tag`` names this attempt's green (see ``staging_name``); on a fenced deployer a
        lost fence raises FenceLost before the next stage or write, and nothing more is done.
        """
        timeline = _Timeline(progress, self.guard)

        with timeline.stage("validate") as closing:
            try:
                validate_model_id(model_id)
                source = open_source(source_uri, self.allowed_roots)
            except (InvalidModelId, SourceRefused) as exc:
                raise DeployFailed("validate", str(exc), refused=True) from exc
            if expected_dimensions is not None and (
                not isinstance(expected_dimensions, int) or expected_dimensions <= 0
            ):
                raise DeployFailed(
                    "validate",
                    f"expected_dimensions must be a positive integer, got {expected_dimensions!r}",
                    refused=True,
                )
            if not self.client.server_ready():
                raise DeployFailed("validate", f"inference server at {self.client.base_url} is not ready")
            closing.append(f"source {source.uri}")

        with timeline.stage("fetch") as closing:
            revision = self.repository.create_revision(model_id, source, before_publish=self.guard)
            closing.append(
                f"revision {revision.revision}: {revision.files} files, {revision.size_bytes} bytes, verified"
            )

        # What the server serves, not what the disk says: they differ after a crash mid-promote.
        previous = self.served_revision(model_id) or self.live_revision(model_id)
        green = staging_name(model_id, attempt_tag)
        try:
            with timeline.stage("stage_green", f"loading revision {revision.revision} as {green}") as closing:
                self._load_green(model_id, revision, attempt_tag)
                closing.append(f"{green} ready")
            with timeline.stage("smoke_test") as closing:
                dimensions = self._smoke_test(green, revision.revision, expected_dimensions)
                closing.append(f"{len(self.probe_texts)} probes, {dimensions} dimensions, finite")
        except BaseException:
            # Whatever stopped us (a failed check, a bug, the worker being stopped), blue was never
            # touched: leave no green behind. A superseded attempt's guard skips this too.
            with suppress(FenceLost, InferenceError):
                self._retire_green(model_id, attempt_tag)
            raise

        with timeline.stage("retire_green") as closing:
            closing.append("unloaded" if self._retire_green(model_id, attempt_tag) else "was not loaded")

        with timeline.stage("promote", f"{previous or 'nothing'} -> {revision.revision}") as closing:
            self._promote(model_id, revision.revision, previous)
            closing.append(f"{model_id} answers from revision {revision.revision}")

        with timeline.stage("done") as closing:
            protect = {revision.revision} | ({previous} if previous else set())
            pruned = self.repository.prune(model_id, protect=protect)
            if pruned:
                closing.append(f"pruned {len(pruned)} old revision(s)")

        return DeployResult(
            model_id=model_id,
            revision=revision.revision,
            previous_revision=previous,
            endpoint=self.endpoint(model_id),
            dimensions=dimensions,
            timings=timeline.timings,
            pruned_revisions=pruned,
        )

    def _load_green(self, model_id: str, revision: Revision, tag: str) -> None:
        green = staging_name(model_id, tag)
        # Greens left by crashed or superseded attempts are unloaded first: loading ours beside them
        # would hold three instances or more (blue, the old greens, ours).
        for leftover in {*self.repository.staging_tags(model_id), tag}:
            self._retire_green(model_id, leftover)
        self.repository.write_settings(model_id, STAGING, revision.revision, tag)
        # ready_timeout bounds the load call itself and the wait for ready after it, together.
        deadline = time.monotonic() + self.ready_timeout
        self.client.load(green, timeout=self.ready_timeout)
        while not self.client.model_ready(green):
            if time.monotonic() > deadline:
                raise DeployFailed("stage_green", f"{green} was not ready within {self.ready_timeout:.0f}s")
            time.sleep(0.1)

    def _smoke_test(self, name: str, revision: str, expected_dimensions: int | None) -> int:
        result = self.client.infer(name, self.probe_texts)
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
        return dimensions

    def _retire_green(self, model_id: str, tag: str = "") -> bool:
        was_loaded = self.client.unload(staging_name(model_id, tag))
        self.repository.remove_settings(model_id, STAGING, tag)
        return was_loaded

    def _promote(self, model_id: str, revision: str, previous: str | None) -> None:
        self.repository.write_settings(model_id, STABLE, revision)
        try:
            self.client.load(model_id, timeout=self.ready_timeout)  # atomic swap when blue is loaded; else a first load
            answered_by = self.client.infer(model_id, self.probe_texts[:1]).parameters.get("revision")
            if answered_by != revision:
                raise DeployFailed("promote", f"{model_id} still answers from revision {answered_by!r}")
        except (DeployFailed, InferenceError):
            self._restore_blue(model_id, previous)
            raise

    def _restore_blue(self, model_id: str, previous: str | None) -> None:
        """Point the stable name back where it was, so disk and server agree on what is live."""
        if previous is None:
            self.client.unload(model_id)
            self.repository.remove_settings(model_id, STABLE)
            return
        self.repository.write_settings(model_id, STABLE, previous)
        self.client.load(model_id, timeout=self.ready_timeout)

    # -- delete ------------------------------------------------------------------------------

    def delete(self, model_id: str, progress: ProgressCallback | None = None) -> DeleteResult:
        """Unload every name of ``model_id`` and remove its revisions. Deleting an absent model is a no-op."""
        timeline = _Timeline(progress, self.guard)
        with timeline.stage("validate"):
            try:
                validate_model_id(model_id)
            except InvalidModelId as exc:
                raise DeployFailed("validate", str(exc), refused=True) from exc
        was_deployed = self.live_revision(model_id) is not None
        result = DeleteResult(model_id=model_id, was_deployed=was_deployed)
        with timeline.stage("unload") as closing:
            greens = [staging_name(model_id, tag) for tag in self.repository.staging_tags(model_id)]
            for name in dict.fromkeys([*greens, staging_name(model_id), model_id]):
                if self.client.unload(name):
                    result.unloaded.append(name)
            closing.append(", ".join(result.unloaded) or "nothing was loaded")
        with timeline.stage("remove") as closing:
            result.removed_revisions = self.repository.remove_model(model_id)
            closing.append(f"{len(result.removed_revisions)} revision(s) removed")
        with timeline.stage("done") as closing:
            if not (was_deployed or result.unloaded or result.removed_revisions):
                closing.append(f"{model_id} was not deployed; nothing to do")
        result.was_deployed = was_deployed or bool(result.unloaded)
        result.timings = timeline.timings
        return result
