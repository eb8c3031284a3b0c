"""The reconciler: keep what the fleet serves equal to what the registry says is live.

Replicas load models on demand only, so a restarted (or newly joined) replica serves nothing while
the registry still says "deployed"; the router gives it no traffic for a model until it has that
model's live revision ready. ``reconcile_models`` looks at the fleet once per cycle (one repository
index per replica, one read of the router's routes, whatever the number of models) and, for every
deployed model where that differs from the live revision, records a ``Drift`` and loads the live
revision where it is missing (the serving layer re-verifies its checksums first); then one publish
of the routes adds those replicas back. It acts under
the model's lease, with a heartbeat and a fence, so it never races a deploy: a model whose lease a
task holds, or took since the cycle looked, is left to that task, and no drift is opened for it (a deploy
in flight is not drift). Where the repository holds no live revision, the registry is
corrected instead. Run once by ``manage.py restore_models``, every few seconds by
``manage.py reconcile --every 5`` (which ``make run`` keeps running). Each pass also records what
every configured inference server (``INFERENCE_REPLICA_URLS``) answers and has loaded, from the same look.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments import selectors
from deployments.inference import FleetView, GreenDeployer, InferenceError, V2Client
from deployments.inference.green import PUBLISH_TIMEOUT
from deployments.models import Drift, EmbeddingModel, InferenceServer
from deployments.services.deployer import deployer_session
from deployments.services.leases import Fence, LeaseHeartbeat, claim_model_lease, new_lease_owner, release_lease
from deployments.services.pipelines import sync_model_state
from deployments.services.tasks import dispatch_next_task


@dataclass
class ReconcileReport:
    restored: list[str] = field(default_factory=list)
    already_served: list[str] = field(default_factory=list)
    not_live: list[str] = field(default_factory=list)  # the registry said deployed; the repository disagreed
    # A task holds (or held since the cycle looked) the model's lease: no drift; it leaves the model served.
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{len(self.restored)} restored, {len(self.already_served)} already served, "
            f"{len(self.not_live)} not live, {len(self.busy)} busy, {len(self.failed)} failed"
        )

    @property
    def changed(self) -> bool:
        return bool(self.restored or self.not_live or self.busy or self.failed)


class InferenceServerDown(Exception):
    pass


# A server that takes longer than this to list its models counts as not answering.
SERVER_CHECK_TIMEOUT = 2.0


def refresh_servers(urls: Sequence[str] | None = None) -> list[InferenceServer]:
    """Ask every configured inference server whether it answers and what it has ready; forget the ones
    no longer configured. What the admin and ``GET /servers`` show."""
    urls = list(urls or settings.INFERENCE_REPLICA_URLS)
    seen: dict[str, set[str] | InferenceError] = {}
    for url in urls:
        with V2Client(url, timeout=SERVER_CHECK_TIMEOUT) as client:
            try:
                seen[url] = {entry["name"] for entry in client.index() if entry.get("state") == "READY"}
            except InferenceError as exc:
                seen[url] = exc
    return record_servers(seen)


def record_servers(seen: Mapping[str, set[str] | InferenceError]) -> list[InferenceServer]:
    """Keep what each server answered (its ready names, or why it did not); forget servers not in ``seen``."""
    for url, answer in seen.items():
        now = timezone.now()
        if isinstance(answer, InferenceError):
            defaults = {"live": False, "loaded": [], "error": str(answer)[:300], "checked_at": now}
        else:
            defaults = {"live": True, "loaded": sorted(answer), "error": "", "checked_at": now, "last_seen_at": now}
        InferenceServer.objects.update_or_create(url=url, defaults=defaults)
    InferenceServer.objects.exclude(url__in=list(seen)).delete()
    return list(InferenceServer.objects.filter(url__in=list(seen)))


@dataclass
class _Restored:
    """A model whose live revision was loaded where missing, its routes not yet published."""

    model: EmbeddingModel
    revision: str
    gap: str
    routed: str


def reconcile_models(wait_for_server: float = 0.0) -> ReconcileReport:
    """Compare every deployed model with what the fleet serves; repair and record what differs.

    One cycle reads the fleet once (one repository index per replica, one read of the router's routes)
    and decides every model from that look, so its reads do not grow with the number of models;
    repairs load per model, then one publish routes them all.
    """
    report = ReconcileReport()
    with deployer_session() as deployer:
        # The registry and its leases are read before the fleet: a task that changes the model after this
        # read does it under a lease taken after it, which the claim in _reconcile_one then notices.
        models = selectors.deployed_models(with_drift=True, with_lease=True)
        view = _look_at_fleet(deployer, wait_for_server)
        restored = []
        for model in models:
            if repair := _reconcile_one(deployer, view, model, report):
                restored.append(repair)
        # A router that started with no table (or whose replicas changed) answers the server endpoints
        # (liveness, readiness, metadata) for the replicas it was last told of: publish the fleet.
        if restored or not deployer.fleet.router_knows_every_replica():
            _publish_restored(deployer, restored, report)
    return report


def _look_at_fleet(deployer: GreenDeployer, wait_for_server: float) -> FleetView:
    """One look at the fleet, waiting up to ``wait_for_server`` seconds for a replica to answer; what each
    server answered is recorded (the admin's servers) from the same look."""
    deadline = time.monotonic() + wait_for_server
    while True:
        answers = deployer.fleet.ready_each()
        record_servers(answers)
        if any(not isinstance(answer, InferenceError) for answer in answers.values()):
            break
        if time.monotonic() >= deadline:
            reason = f"no inference replica is ready ({', '.join(deployer.fleet.replicas)})"
            _server_down(reason)
            raise InferenceServerDown(reason)
        time.sleep(0.5)
    ready = {url: None if isinstance(answer, InferenceError) else answer for url, answer in answers.items()}
    try:
        return deployer.fleet.view(ready)
    except InferenceError as exc:
        _server_down(f"the router could not be read: {exc}")
        raise InferenceServerDown(str(exc)) from exc


def _reconcile_one(
    deployer: GreenDeployer, view: FleetView, model: EmbeddingModel, report: ReconcileReport
) -> _Restored | None:
    """Decide one model from the cycle's view; repair it under its lease. Returns a restore whose routes
    are still to be published."""
    model_id = model.pk
    routed = view.routed.get(model_id, "").partition("~")[2]
    try:
        live = deployer.live_revision(model_id)
        if live != model.live_revision:
            gap = f"the repository says {live or 'nothing'} is live; the registry says {model.live_revision}"
        else:
            gap = deployer.out_of_step(model_id, view)
    except InferenceError as exc:
        report.failed[model_id] = str(exc)
        _note_drift(model, routed, f"the fleet could not be read: {exc}", "none: will try again")
        return None
    if gap is None:
        if down := view.down():
            # A replica that did not answer may lack the revision: nothing is in step until it answers.
            report.failed[model_id] = f"cannot check {', '.join(down)}: not answering"
            return None
        if model.open_drifts:  # read with the models: a model in step costs no query
            _resolve_drift(model, "in step again")
        report.already_served.append(model_id)
        return None
    if model.lease_held:
        # A deploy in flight moves the route, the repository and the registry one after the other: what
        # this cycle saw of it is not drift. The task leaves the model served; the next cycle checks.
        report.busy.append(model_id)
        return None
    owner = new_lease_owner()
    lease = claim_model_lease(model_id, owner)
    if lease is None:
        report.busy.append(model_id)
        return None
    try:
        if lease.generation != model.lease_generation + 1:
            # Someone took the lease (and acted) between this cycle's look and now: the look is stale.
            report.busy.append(model_id)
            return None
        with LeaseHeartbeat(model_id, owner) as heartbeat:
            fence = Fence(lease, heartbeat)
            revision = deployer.fenced(fence.check).restore(model_id, view, publish=False)
            if revision != model.live_revision:
                sync_model_state(model_id, deployer, fence)
            if revision is None:
                _resolve_drift(model, "registry corrected: the repository holds no live revision", gap, routed)
                report.not_live.append(model_id)
                return None
            return _Restored(model, revision, gap, routed)
    except InferenceError as exc:
        _note_drift(model, routed, gap, f"reload failed: {exc}")
        report.failed[model_id] = str(exc)
        return None
    finally:
        release_lease(model_id, owner)
        dispatch_next_task(model_id)


def _publish_restored(deployer: GreenDeployer, restored: list[_Restored], report: ReconcileReport) -> None:
    """One publish for every model restored this cycle: the replicas that loaded them rejoin their clusters
    (and every replica the fleet's cluster).

    Outside the models' leases: a publish writes the whole table from what the repository and the
    replicas say now, under the table's lock, so it carries a concurrent deploy's changes too.
    """
    try:
        deployer.fleet.publish(deployer.repository, timeout=PUBLISH_TIMEOUT)
    except InferenceError as exc:
        for repair in restored:
            _note_drift(repair.model, repair.routed, repair.gap, f"loaded, but the routes were not published: {exc}")
            report.failed[repair.model.pk] = str(exc)
        return
    for repair in restored:
        action = f"revision {repair.revision} ready on every replica and routed again"
        _resolve_drift(repair.model, action, repair.gap, repair.routed)
        report.restored.append(repair.model.pk)


def _note_drift(model: EmbeddingModel, served: str, detail: str, action: str) -> Drift:
    """Open the model's drift (or update the open one) with what was seen and done."""
    with transaction.atomic():
        drift = Drift.objects.select_for_update().filter(embedding_model=model, resolved_at__isnull=True).first()
        if drift is None:
            drift = Drift(embedding_model=model, registered_revision=model.live_revision)
        drift.served_revision, drift.detail, drift.action = served, detail, _stamped(action)
        drift.save()
    return drift


def _resolve_drift(model: EmbeddingModel, action: str, seen: str = "", served: str = "") -> None:
    """Close the model's open drift, if any (opening one first when the repair came with the first sight)."""
    open_drift = Drift.objects.filter(embedding_model=model, resolved_at__isnull=True).first()
    if open_drift is None and not seen:
        return
    drift = open_drift or _note_drift(model, served, seen, action)
    Drift.objects.filter(pk=drift.pk).update(
        resolved_at=timezone.now(), action=_stamped(action, drift.action), updated_at=timezone.now()
    )


def _server_down(reason: str) -> None:
    for model in selectors.deployed_models():
        _note_drift(model, "", reason, "none: waiting for the server")


def _stamped(action: str, earlier: str = "") -> str:
    line = f"{timezone.now():%Y-%m-%d %H:%M:%S} {action}"
    return f"{line}\n{earlier}" if earlier and not earlier.startswith(line) else line
