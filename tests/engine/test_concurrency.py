"""Many requests, many worker processes, one model: one task at a time, in submission order."""

from __future__ import annotations

import itertools
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from knox.models import AuthToken
from rest_framework.test import APIClient

from deployments.models import TERMINAL_STATUSES, DeploymentTask, TaskStatus
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SUBMITTERS = 20


def test_20_concurrent_deploys_of_one_model_run_serialized_in_order(operator, settings, qcluster):
    # The subject is the task engine, so workers drive the probe deployer (a few ms per stage)
    # instead of 20 real deploys; the real deployer's path is proven in test_e2e and test_services.
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    model = EmbeddingModelFactory(id="contended")
    EmbeddingModelFactory(id="bystander")
    _, token = AuthToken.objects.create(user=operator, expiry=None)
    start = threading.Barrier(SUBMITTERS)

    def submit(i: int) -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        start.wait()
        try:
            body = {"embedding_model_id": model.id, "config": {"expected_dimensions": 3}}
            return client.post("/deploy", data=json.dumps(body), content_type="application/json").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        codes = list(pool.map(submit, range(SUBMITTERS)))
    assert codes == [202] * SUBMITTERS

    tasks = DeploymentTask.objects.filter(embedding_model_id=model.id)
    assert sorted(tasks.values_list("sequence", flat=True)) == list(range(1, SUBMITTERS + 1))

    cluster = qcluster(Q_WORKERS="4")
    client = APIClient()
    client.force_authenticate(operator)
    client.post("/deploy", data=json.dumps({"embedding_model_id": "bystander"}), content_type="application/json")

    def all_finished() -> bool:
        return not DeploymentTask.objects.exclude(status__in=TERMINAL_STATUSES).exists()

    wait_for(all_finished, 120, "every task to finish", cluster.log_tail)

    runs = list(tasks.order_by("sequence"))
    assert [t.status for t in runs] == [TaskStatus.DONE] * SUBMITTERS, [t.detail for t in runs]
    for earlier, later in itertools.pairwise(runs):
        # Started only after the task submitted before it had finished: serialized and in order.
        assert earlier.finished_at <= later.started_at, (earlier.sequence, later.sequence)
    assert len({t.lease_owner for t in runs}) == SUBMITTERS  # every run held the lease under its own name
    assert DeploymentTask.objects.get(embedding_model_id="bystander").status == TaskStatus.DONE
