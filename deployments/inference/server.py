"""Start and stop a local MLServer: the embedded default's server and the tests' server.

The server listens on 127.0.0.1 only, loads nothing at start-up (the control plane decides what
is live), has metrics off, and is stopped by its own process group so no worker outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .client import V2Client
from .errors import ServerUnavailable

# The folder that holds the ``deployments`` package, so MLServer can import our runtime.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalMLServer:
    """One MLServer process serving ``repository_root``; ``workdir`` holds its log."""

    def __init__(
        self,
        repository_root: Path | str,
        workdir: Path | str,
        http_port: int | None = None,
        grpc_port: int | None = None,
        parallel_workers: int = 0,
        extra_env: dict[str, str] | None = None,
    ):
        self.repository_root = Path(repository_root).resolve()
        self.workdir = Path(workdir).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.parallel_workers = parallel_workers
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "mlserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_settings(self) -> Path:
        """Write the server's settings.json into the repository root.

        ``mlserver start FOLDER`` always takes FOLDER as its model repository and reads
        FOLDER/settings.json, so that is where the server settings must live.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repository_root.mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            # gRPC always binds its port: give it a free one rather than collide on 8081.
            "grpc_port": self.grpc_port,
            "model_repository_root": str(self.repository_root),
            "load_models_at_startup": False,
            "metrics_endpoint": None,
            "parallel_workers": self.parallel_workers,
            "debug": False,
        }
        path = self.repository_root / "settings.json"
        path.write_text(json.dumps(settings, indent=2))
        return path

    def start(self, timeout: float = 120.0) -> LocalMLServer:
        if self.process and self.process.poll() is None:
            return self
        self.write_settings()
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        env.update(self.extra_env)
        mlserver_bin = Path(sys.executable).with_name("mlserver")
        command = [str(mlserver_bin), "start", str(self.repository_root)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() takes every worker with it
            )
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with V2Client(self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerUnavailable(
                        f"MLServer exited with code {self.process.returncode} during start-up; "
                        f"last lines of its log:\n{self.log_tail()}"
                    )
                if client.server_ready():
                    return
                time.sleep(0.2)
        self.stop()
        raise ServerUnavailable(f"MLServer did not become ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalMLServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run a local MLServer in the foreground until interrupted: ``python -m deployments.inference.server``."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a local MLServer for the control plane.")
    parser.add_argument("--repository", required=True, help="model repository root (created if missing)")
    parser.add_argument("--workdir", help="folder for the server's log (default: <repository>/../mlserver)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port on 127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: any free port)")
    args = parser.parse_args(argv)

    repository = Path(args.repository)
    workdir = Path(args.workdir) if args.workdir else repository.parent / "mlserver"
    server = LocalMLServer(repository, workdir, http_port=args.port, grpc_port=args.grpc_port or None)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"MLServer ready at {server.url} (repository {server.repository_root}, log {server.log_path})", flush=True)
    try:
        while not stopping and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
