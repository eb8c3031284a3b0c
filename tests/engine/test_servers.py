"""The inference servers in the registry: each pass of the reconciler records whether each answers and
what it has loaded, and the API, the admin and the metrics show it, with its memory used and free."""

from __future__ import annotations

import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from deployments import jobs
from deployments.inference.server import free_port
from deployments.models import EmbeddingModel, InferenceServer, ModelRevision, TaskStatus
from deployments.services import submit_deployment
from deployments.services.reconciler import reconcile_models, refresh_servers
from tests.support.factories import EmbeddingModelFactory
from tests.support.tiny_models import TINY_DIMENSIONS

pytestmark = [pytest.mark.mlserver, pytest.mark.django_db]


def test_each_server_is_listed_with_what_it_has_loaded_or_why_it_does_not_answer(
    inference_settings, mlserver, api, admin_client
):
    EmbeddingModelFactory(id="srv-listed")
    assert jobs.run_task(submit_deployment("srv-listed").task.pk) == TaskStatus.DONE
    down = f"http://127.0.0.1:{free_port()}"
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, down]

    reconcile_models()

    live, dead = InferenceServer.objects.get(url=mlserver.url), InferenceServer.objects.get(url=down)
    revision = EmbeddingModel.objects.get(pk="srv-listed").live_revision
    assert live.live and f"srv-listed~{revision}" in live.loaded and live.last_seen_at is not None
    assert not dead.live and dead.loaded == [] and dead.last_seen_at is None and down in dead.error
    listed = {server["url"]: server for server in api.get("/servers").json()}
    assert (listed[mlserver.url]["live"], listed[down]["live"]) == (True, False)
    assert f"srv-listed~{revision}" in listed[mlserver.url]["loaded"]
    page = admin_client.get("/admin/deployments/inferenceserver/").content.decode()
    assert mlserver.url in page and down in page and f"<code>srv-listed~{revision}</code>" in page


def test_a_server_no_longer_configured_is_forgotten(inference_settings, mlserver):
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url, f"http://127.0.0.1:{free_port()}"]
    refresh_servers()
    inference_settings.INFERENCE_REPLICA_URLS = [mlserver.url]

    refresh_servers()

    assert list(InferenceServer.objects.values_list("url", flat=True)) == [mlserver.url]


def test_each_server_shows_its_memory_used_and_free_in_the_api_the_admin_and_the_metrics(
    inference_settings, mlserver, api, admin_client, tiny_model_dir, sources_root
):
    inference_settings.REPLICA_MEMORY_BYTES = 20_000_000
    source = shutil.copytree(tiny_model_dir, sources_root / "tiny")
    EmbeddingModelFactory(id="srv-memory", source=str(source), dimensions=TINY_DIMENSIONS)
    assert jobs.run_task(submit_deployment("srv-memory").task.pk) == TaskStatus.DONE
    revision = EmbeddingModel.objects.get(pk="srv-memory").live_revision
    footprint = ModelRevision.objects.get(pk=f"srv-memory~{revision}").memory_bytes

    reconcile_models()

    (listed,) = (server for server in api.get("/servers").json() if server["url"] == mlserver.url)
    # Models other tests of the session left loaded are not registered here: they have no footprint on record.
    assert (listed["memory_budget_bytes"], listed["memory_used_bytes"]) == (20_000_000, footprint)
    assert listed["memory_free_bytes"] == 20_000_000 - footprint
    page = admin_client.get("/admin/deployments/inferenceserver/").content.decode()
    used, free = f"{footprint / 1e6:.1f} MB", f"{(20_000_000 - footprint) / 1e6:.1f} MB"
    assert f"{used} used of 20.0 MB, {free} free (1 revision(s))" in page
    metrics = {
        (sample.name, sample.labels.get("replica")): sample.value
        for family in text_string_to_metric_families(APIClient().get("/metrics").content.decode())
        for sample in family.samples
    }
    assert metrics["controlplane_replica_memory_used_bytes", mlserver.url] == footprint
    assert metrics["controlplane_replica_memory_budget_bytes", mlserver.url] == 20_000_000
