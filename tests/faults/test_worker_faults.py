"""Fault drills with real worker processes, a real MLServer and the real green deployer.

A test-only fault hook (deployments.services.faults, switched on by environment variables in the
worker only) holds the first attempt at a chosen stage, so the fault lands exactly there. Each drill
asserts: every task ends in a terminal status, the server serves what the registry says is live,
and blue answered every request sent to it meanwhile. Recovery times are printed (pytest -s).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from deployments import services
from deployments.inference import DEPLOY_STAGES
from deployments.models import EmbeddingModel, Task, TaskStatus
from deployments.services.faults import HOLD_AT_ENV, HOLD_FILE_ENV
from tests.support.drills import (
    BlueTraffic,
    assert_settled,
    held_worker_pid,
    live_model,
    wait_for_superseded_attempt_to_stop,
)
from tests.support.processes import wait_for_status
from tests.support.snapshots import repository_tree, rows, served

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.mlserver, pytest.mark.drill]

LEASE_SECONDS = 2


@pytest.fixture
def drill_settings(inference_settings):
    inference_settings.TASK_LEASE_SECONDS = LEASE_SECONDS
    return inference_settings


def resolve_lost_attempt(first: Task) -> Task:
    """Wait for the dead attempt's lease to run out, sweep, and return the retry the sweeper created."""
    time.sleep(LEASE_SECONDS + 0.5)
    assert services.sweep_tasks().failed == [str(first.pk)]
    return Task.objects.get(retry_of=first)


@pytest.mark.parametrize("stage", DEPLOY_STAGES)
def test_sigkill_of_the_busy_worker_at_each_stage(
    stage, drill_settings, qcluster, mlserver, envoy, minilm_dir, sources_root, tmp_path
):
    model_id = f"kill-at-{stage.replace('_', '-')}"
    live_model(model_id, minilm_dir, sources_root)
    hold = tmp_path / "hold"
    cluster = qcluster(**{HOLD_AT_ENV: stage, HOLD_FILE_ENV: str(hold)})

    with BlueTraffic(envoy.url, model_id) as traffic:
        first = services.submit_deployment(model_id).task
        worker = held_worker_pid(hold)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        retry = resolve_lost_attempt(first)
        # A fresh cluster, as the supervisor starts one (a killed worker can wedge its cluster: django-q2 #23).
        cluster.kill()
        replacement = qcluster()
        wait_for_status(retry, {TaskStatus.DONE, TaskStatus.FAILED}, timeout=120, cluster=replacement)
        recovered_in = time.monotonic() - killed_at

    first.refresh_from_db()
    assert (first.status, first.metadata["lost"], first.metadata["retried_as"]) == ("failed", True, str(retry.pk))
    assert retry.status == TaskStatus.DONE, retry.detail
    assert EmbeddingModel.objects.get(pk=model_id).live_revision == retry.metadata["revision"]
    assert_settled(model_id)
    assert traffic.sent > 0 and traffic.failures == []
    print(f"\nSIGKILL at {stage}: recovered (retry done) {recovered_in:.1f}s after the kill; blue {traffic.sent} ok")


def test_a_paused_worker_that_wakes_after_its_retry_changes_nothing(
    drill_settings, qcluster, mlserver, envoy, minilm_dir, sources_root, tmp_path
):
    """SIGSTOP the busy worker after fetch, past its lease; the retry deploys; SIGCONT: the stale worker
    finds its fence lost at its first write and stops. Proof: the repository tree (paths, sizes,
    modification times), the server's index and every database row of the model are unchanged."""
    model_id = "paused-worker"
    live_model(model_id, minilm_dir, sources_root)
    hold = tmp_path / "hold"
    cluster = qcluster(**{HOLD_AT_ENV: "load_green", HOLD_FILE_ENV: str(hold)})

    with BlueTraffic(envoy.url, model_id) as traffic:
        first = services.submit_deployment(model_id).task
        worker = held_worker_pid(hold)
        os.kill(worker, signal.SIGSTOP)
        try:
            retry = resolve_lost_attempt(first)
            wait_for_status(retry, {TaskStatus.DONE, TaskStatus.FAILED}, timeout=120, cluster=cluster)
            assert retry.status == TaskStatus.DONE, retry.detail
            repository = Path(mlserver.repository_root) / model_id
            before = (repository_tree(repository), served(mlserver.url), rows(model_id))
            hold.unlink()
        finally:
            os.kill(worker, signal.SIGCONT)

        wait_for_superseded_attempt_to_stop(first, 60, cluster.log_tail)

    assert (repository_tree(repository), served(mlserver.url), rows(model_id)) == before
    assert_settled(model_id)
    assert traffic.sent > 0 and traffic.failures == []
