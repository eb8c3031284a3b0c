"""What the router's tests and its benchmark share: versioned names on a replica, and traffic through Envoy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from deployments.inference.repository import DEFAULT_RUNTIME
from deployments.inference.router import ModelRoute, RouteTable

# One text to embed, as a V2 infer request body.
INFER_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["through the front door"]}]}


def write_versioned_settings(repository_root: Path, model_id: str, revision: str, uri: Path) -> str:
    """Settings for ``<model_id>~<revision>``, in a folder named after it as MLServer expects."""
    name = f"{model_id}~{revision}"
    folder = repository_root / model_id / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "name": name,
        "implementation": DEFAULT_RUNTIME,
        "parameters": {"uri": str(uri), "extra": {"model_id": model_id, "revision": revision}},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return name


def publish_one(
    table: RouteTable, model_id: str, served_name: str, replicas: Iterable[str], also: Iterable[str] = ()
) -> str:
    """Route ``model_id`` to ``served_name`` on ``replicas``; the names in ``also`` keep a cluster there too
    (requests in flight on them finish, and flipping back is a route update alone)."""
    replicas = tuple(replicas)
    clusters = {name: replicas for name in {served_name, *also}}
    return table.publish([ModelRoute(model_id, served_name)], clusters)


class Traffic:
    """Client threads calling a model through Envoy, never retrying: every failure counts, and every
    answer keeps when its request was sent, when it came back and which revision answered."""

    def __init__(self, url: str, model_id: str, clients: int = 4):
        self.url, self.model_id, self.clients = url, model_id, clients
        self.answers: list[tuple[float, float, str]] = []  # (sent, answered, revision)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def requests(self) -> int:
        return len(self.answers) + len(self.failures)

    def _fire(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post(f"/v2/models/{self.model_id}/infer", json=INFER_BODY)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                self.answers.append((sent, time.monotonic(), response.json()["parameters"]["revision"]))

    def __enter__(self) -> Traffic:
        self._threads = [threading.Thread(target=self._fire, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
