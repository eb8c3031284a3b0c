"""A replica busy loading one model still takes a deploy of another: deploys of different models run in
parallel on it (MLServer's own /v2/health/ready is false while any model loads)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from deployments.inference import V2Client
from tests.support.slow_runtime import SLOW_RUNTIME

pytestmark = pytest.mark.mlserver

LOAD_SECONDS = 4.0


def test_a_replica_loading_another_model_counts_as_ready_for_a_deploy(fleet, mlserver):
    name = "slow-loader~0001"
    folder = mlserver.repository_root / "slow-loader" / name
    folder.mkdir(parents=True)
    settings = {"name": name, "implementation": SLOW_RUNTIME, "parameters": {"extra": {"load_seconds": LOAD_SECONDS}}}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    with V2Client(mlserver.url) as client:
        loading = threading.Thread(target=client.load, args=(name,))
        loading.start()
        try:
            deadline = time.monotonic() + LOAD_SECONDS
            while not any(entry["name"] == name for entry in client.index()):
                assert time.monotonic() < deadline, "the slow load never started"
                time.sleep(0.05)
            assert not client.model_ready(name)  # still loading

            assert fleet.ready_replicas() == {mlserver.url: True}
        finally:
            loading.join()
            client.unload(name)
            (folder / "model-settings.json").unlink()
            folder.rmdir()
            folder.parent.rmdir()
