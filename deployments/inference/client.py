"""A small client for the V2 (Open Inference / KServe) protocol's REST API, as MLServer and Triton speak it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from .errors import InferenceFailed, LoadFailed, ModelNotFound, ServerUnavailable

DEFAULT_TIMEOUT = 10.0
_CONNECTION_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# Loading a model can legitimately take a while (weights from disk, framework imports).
DEFAULT_LOAD_TIMEOUT = 300.0
# Unloading drops the server's reference (and waits for requests in flight to drain): quick.
DEFAULT_UNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class InferenceResult:
    """Embeddings of one infer call and the parameters the server returned with them."""

    embeddings: np.ndarray
    model_name: str
    parameters: dict[str, Any] = field(default_factory=dict)


class V2Client:
    """Repository and inference calls; every call has a timeout and raises a typed InferenceError."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
        unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.unload_timeout = unload_timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> V2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            try:
                return self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
            except _CONNECTION_DROPPED:
                # A pooled keep-alive connection the server had closed (uvicorn closes one after an
                # error response). Every call here is idempotent, so one retry on a fresh connection is safe.
                return self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(
                f"inference server at {self.base_url} did not answer {method} {path} within "
                f"{timeout or self.timeout:.0f}s"
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"inference server at {self.base_url} is unreachable: {exc}") from exc

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return response.text.strip() or f"HTTP {response.status_code}"
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
        return str(body)

    # -- health ------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        """True when the server answers its readiness probe; False when it is down."""
        try:
            return self._request("GET", "/v2/health/ready").status_code == 200
        except ServerUnavailable:
            return False

    def server_live(self) -> bool:
        """True when the server answers its liveness probe; False when it is down. Unlike readiness,
        MLServer's liveness stays true while some model loads."""
        try:
            return self._request("GET", "/v2/health/live").status_code == 200
        except ServerUnavailable:
            return False

    # -- repository --------------------------------------------------------------------------

    def index(self) -> list[dict[str, Any]]:
        """Every model the server's repository knows of, with its state (READY, UNAVAILABLE, ...)."""
        response = self._request("POST", "/v2/repository/index", json={})
        if response.status_code != 200:
            raise InferenceFailed(f"repository index failed: {self._error_text(response)}")
        return response.json()

    def load(self, name: str, timeout: float | None = None) -> None:
        """Load (or atomically reload) ``name`` from the server's model repository, waiting at most
        ``timeout`` seconds (default: the client's load timeout) for the server to answer."""
        response = self._request("POST", f"/v2/repository/models/{name}/load", timeout=timeout or self.load_timeout)
        if response.status_code == 200:
            return
        if response.status_code == 404:
            raise ModelNotFound(f"model {name!r} has no valid settings in the repository: {self._error_text(response)}")
        raise LoadFailed(f"server failed to load {name!r}: {self._error_text(response)}")

    def unload(self, name: str) -> bool:
        """Unload ``name``; True if it was loaded, False if the server did not have it."""
        response = self._request("POST", f"/v2/repository/models/{name}/unload", timeout=self.unload_timeout)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise InferenceFailed(f"server failed to unload {name!r}: {self._error_text(response)}")

    def model_ready(self, name: str) -> bool:
        response = self._request("GET", f"/v2/models/{name}/ready")
        return response.status_code == 200

    def model_metadata(self, name: str) -> dict[str, Any] | None:
        """The V2 metadata of a loaded model, or None when the server does not serve ``name``."""
        response = self._request("GET", f"/v2/models/{name}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise InferenceFailed(f"metadata of {name!r} failed: {self._error_text(response)}")
        return response.json()

    # -- inference ---------------------------------------------------------------------------

    def infer(self, name: str, texts: list[str]) -> InferenceResult:
        """Embed ``texts`` with model ``name``; returns a float32 array of shape [len(texts), dim]."""
        payload = {
            "inputs": [
                {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)},
            ]
        }
        response = self._request("POST", f"/v2/models/{name}/infer", json=payload)
        if response.status_code == 404:
            raise ModelNotFound(f"model {name!r} is not loaded: {self._error_text(response)}")
        if response.status_code != 200:
            raise InferenceFailed(f"inference on {name!r} failed: {self._error_text(response)}")
        body = response.json()
        try:
            output = body["outputs"][0]
            embeddings = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InferenceFailed(f"inference on {name!r} returned a malformed response: {exc}") from exc
        return InferenceResult(
            embeddings=embeddings,
            model_name=body.get("model_name", name),
            parameters=body.get("parameters") or {},
        )
