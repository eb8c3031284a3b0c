"""The inference servers in the registry: each pass of the reconciler records whether each answers and
what it has loaded, and the API and the admin show it."""

from __future__ import annotations

import pytest

from deployments import jobs
from deployments.inference.server import free_port
from deployments.models import EmbeddingModel, InferenceServer, TaskStatus
from deployments.services import submit_deployment
from deployments.services.reconciler import reconcile_models, refresh_servers
from tests.support.factories import EmbeddingModelFactory

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
