"""A server on 127.0.0.1 that records every request it is sent: a host a caller's string could point the
control plane at, to prove what was (or was not) sent there, credentials included."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    authorization: str | None


class RecordingServer:
    """Answers every request 404 (an MLflow-style JSON error), or a redirect to ``redirect_to``."""

    def __init__(self, redirect_to: str | None = None):
        self.received: list[Received] = []
        self.redirect_to = redirect_to
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.received.append(Received(self.command, self.path, self.headers.get("Authorization")))
                if recorder.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirect_to.rstrip("/") + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "recorded"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
