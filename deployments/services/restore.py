"""Put back what is live after the inference server restarts.

The server loads models on demand only, so a restarted server serves nothing while the registry
still says "deployed". ``restore_live_models`` loads each deployed model's live revision again
(the serving layer re-verifies its checksums first), under the model's lease so it never
overlaps a running task, and corrects the registry where the repository holds no live revision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from deployments import selectors
from deployments.inference import InferenceError
from deployments.models import EmbeddingModel
from deployments.services.deployer import deployer_session
from deployments.services.leases import claim_model_lease, new_lease_owner, release_lease
from deployments.services.pipelines import sync_model_state
from deployments.services.tasks import dispatch_next_task


@dataclass
class RestoreReport:
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


class InferenceServerDown(Exception):
    pass


def restore_live_models(wait_for_server: float = 0.0) -> RestoreReport:
    """Make the inference server serve every deployed model's live revision; report what was done."""
    report = RestoreReport()
    with deployer_session() as deployer:
        deadline = time.monotonic() + wait_for_server
        while not deployer.client.server_ready():
            if time.monotonic() >= deadline:
                raise InferenceServerDown(f"inference server at {deployer.client.base_url} is not ready")
            time.sleep(0.5)
        for model_id in selectors.embedding_model_ids(states=[EmbeddingModel.State.DEPLOYED]):
            owner = new_lease_owner()
            if not claim_model_lease(model_id, owner):
                report.busy.append(model_id)
                continue
            try:
                served_before = deployer.served_revision(model_id)
                revision = deployer.restore(model_id)
                if revision is None:
                    sync_model_state(model_id, deployer)
                    report.not_live.append(model_id)
                elif served_before == revision:
                    report.already_served.append(model_id)
                else:
                    report.restored.append(model_id)
            except InferenceError as exc:
                report.failed[model_id] = str(exc)
            finally:
                release_lease(model_id, owner)
                dispatch_next_task(model_id)
    return report
