"""Each MLServer replica serves its own Prometheus metrics on a port of its own."""

from __future__ import annotations

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.inference.server import LocalMLServer


@pytest.mark.mlserver
def test_a_replica_serves_its_metrics_on_its_metrics_port(mlserver: LocalMLServer):
    assert mlserver.metrics_port not in {mlserver.http_port, mlserver.grpc_port}

    response = httpx.get(mlserver.metrics_url, timeout=5)

    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    # MLServer's own inference metrics and the process's.
    assert {"model_infer_request_duration", "model_infer_request_success", "process_resident_memory_bytes"} <= names
    # Its metrics are its own: the control plane's multiprocess folder is not handed to it.
    assert "PROMETHEUS_MULTIPROC_DIR" not in psutil.Process(mlserver.process.pid).environ()
