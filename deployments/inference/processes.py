"""A server process on this machine, in a process group of its own: MLServer and Envoy are run this way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from .errors import ServerUnavailable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalProcess:
    """Starts a command with its output in ``log_path``, waits until it is ready, and stops its whole group.

    A subclass names itself (``name``) and implements ``start()`` with ``spawn`` and ``wait_until``.
    """

    name = "the process"

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        raise NotImplementedError

    def spawn(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends every child with it
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float, interval: float) -> None:
        """Return once ``ready()``; raise ServerUnavailable (after stopping it) if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerUnavailable(
                    f"{self.name} exited with code {self.process.returncode} during start-up; "
                    f"last lines of its log:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(interval)
        self.stop()
        raise ServerUnavailable(f"{self.name} did not become ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the whole group, SIGKILL if it has not ended within ``timeout``."""
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """'killed by SIGKILL' or 'exited with status 1', from a Popen returncode."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class StopRequested(Exception):
    """SIGTERM or SIGINT reached run_in_foreground: stop, even in the middle of the start."""


def run_in_foreground(process: LocalProcess, banner: str) -> int:
    """Start ``process``, print ``banner``, and keep it running until SIGTERM or SIGINT, then stop it.

    Returns 0 once stopped on request (during its start too: a replica still loading is not waited for);
    when the process ends on its own, says how on stderr and returns its exit status as a shell gives it
    (137 for SIGKILL), so whoever restarts this one knows too.
    """

    def request_stop(signum: int, frame: object) -> None:
        raise StopRequested

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ended: int | None = None
    try:
        process.start()
        print(banner, flush=True)
        while (ended := process.process.poll()) is None:
            time.sleep(0.5)
    except StopRequested:
        ended = None
    finally:
        # A second signal must not cut the stop short: that would leave the server (a session of its own) running.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        process.stop()
    if ended is None:
        return 0
    print(f"{process.name} {describe_exit(ended)}", file=sys.stderr, flush=True)
    return exit_status(ended)
