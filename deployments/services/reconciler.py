"""The reconciler: keep what the fleet serves equal to what the registry says is live.

Replicas load models on demand only, so a restarted (or newly joined) replica serves nothing while
the registry still says "deployed"; the router gives it no traffic for a model until it has that
model's live revision ready. ``reconcile_models`` looks at the fleet once (what each replica has
ready, what the router routes) and, for every deployed model where that differs from the live
revision, records a ``Drift``, loads the live revision where it is missing (the serving layer
re-verifies its checksums first) and publishes the routes, which adds those replicas back. It acts under
the model's lease, with a heartbeat and a fence, so it never races a deploy: a model whose lease a
task holds is left to that task. Where the repository holds no live revision, the registry is
corrected instead. Run once by ``manage.py restore_models``, every few seconds by
``manage.py reconcile --every 5`` (which ``make run`` keeps running). Each pass also records what
every configured inference server (``INFERENCE_REPLICA_URLS``) answers and has loaded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments import selectors
from deployments.inference import FleetView, GreenDeployer, InferenceError, V2Client
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
    busy: list[str] = field(default_factory=list)  # a task holds the model's lease; it leaves the model served
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
    for url in urls:
        now = timezone.now()
        with V2Client(url, timeout=SERVER_CHECK_TIMEOUT) as client:
            try:
                ready = sorted(entry["name"] for entry in client.index() if entry.get("state") == "READY")
            except InferenceError as exc:
                seen = {"live": False, "loaded": [], "error": str(exc)[:300], "checked_at": now}
            else:
                seen = {"live": True, "loaded": ready, "error": "", "checked_at": now, "last_seen_at": now}
        InferenceServer.objects.update_or_create(url=url, defaults=seen)
    InferenceServer.objects.exclude(url__in=urls).delete()
    return list(InferenceServer.objects.filter(url__in=urls))


def reconcile_models(wait_for_server: float = 0.0) -> ReconcileReport:
    """Compare every deployed model with what the fleet serves; repair and record what differs."""
    report = ReconcileReport()
    refresh_servers()
    with deployer_session() as deployer:
        deadline = time.monotonic() + wait_for_server
        while not any(deployer.fleet.ready_replicas().values()):
            if time.monotonic() >= deadline:
                reason = f"no inference replica is ready ({', '.join(deployer.fleet.replicas)})"
                _server_down(reason)
                raise InferenceServerDown(reason)
            time.sleep(0.5)
        try:
            view = deployer.fleet.view()
        except InferenceError as exc:
            _server_down(f"the router could not be read: {exc}")
            raise InferenceServerDown(str(exc)) from exc
        for model in selectors.deployed_models():
            _reconcile_one(deployer, view, model, report)
    return report


def _reconcile_one(deployer: GreenDeployer, view: FleetView, model: EmbeddingModel, report: ReconcileReport) -> None:
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
        return
    if gap is None:
        if down := view.down():
            # A replica that did not answer may lack the revision: nothing is in step until it answers.
            report.failed[model_id] = f"cannot check {', '.join(down)}: not answering"
            return
        _resolve_drift(model, "in step again")
        report.already_served.append(model_id)
        return
    owner = new_lease_owner()
    lease = claim_model_lease(model_id, owner)
    if lease is None:
        _note_drift(model, routed, gap, "waiting: a task holds the model's lease")
        report.busy.append(model_id)
        return
    try:
        with LeaseHeartbeat(model_id, owner) as heartbeat:
            fence = Fence(lease, heartbeat)
            revision = deployer.fenced(fence.check).restore(model_id)
            if revision != model.live_revision:
                sync_model_state(model_id, deployer, fence)
            if revision is None:
                _resolve_drift(model, "registry corrected: the repository holds no live revision", gap, routed)
                report.not_live.append(model_id)
            else:
                _resolve_drift(model, f"revision {revision} ready on every replica and routed again", gap, routed)
                report.restored.append(model_id)
    except InferenceError as exc:
        _note_drift(model, routed, gap, f"reload failed: {exc}")
        report.failed[model_id] = str(exc)
    finally:
        release_lease(model_id, owner)
        dispatch_next_task(model_id)


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
