"""`make run` (scripts/run-stack.sh) as a user starts it: from a terminal, in the background with
`setsid make run &`, or under a supervisor; on its own var folder and free ports, and stopped by a signal."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import psutil

from deployments.inference.server import free_port
from tests.support.processes import PROJECT_ROOT, wait_for

# What a fresh login shell has; nothing of the test's own settings (its database, its metrics folder).
KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TMPDIR", "SHELL")
WAYS = ("terminal", "background", "supervisor")


def fresh_environment(**variables: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    env.update(variables)
    return env


class Stack:
    """One `make run` (or, under a supervisor, scripts/run-stack.sh itself) on ``var_dir``.

    ``way`` is how it is started: ``terminal`` (make as the foreground job of a terminal of its own, so
    that Ctrl-C is the terminal's SIGINT to that job), ``background`` (``setsid make run &`` from a
    non-interactive shell, which starts make with SIGINT ignored) or ``supervisor`` (the script as the
    main process of a session, as systemd runs it; signals go to that pid alone).
    """

    def __init__(self, way: str, var_dir: Path, replicas: int = 1, **env: str):
        assert way in WAYS, way
        self.way = way
        self.var_dir = var_dir
        self.log_path = var_dir.parent / f"stack-{way}.log"
        self.web_url = f"http://127.0.0.1:{free_port()}"
        self.replica_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(replicas)]
        self.env = fresh_environment(
            CONTROLPLANE_VAR_DIR=str(var_dir),
            INFERENCE_SERVER_URL=f"http://127.0.0.1:{free_port()}",
            ROUTER_ADMIN_URL=f"http://127.0.0.1:{free_port()}",
            INFERENCE_REPLICA_URLS=",".join(self.replica_urls),
            WEB_ADDR=self.web_url.removeprefix("http://"),
            **env,
        )
        self.pid: int | None = None  # the main process: make, or the script under a supervisor
        self.process: subprocess.Popen | None = None
        self._terminal: int | None = None  # the pty's controlling side, for the "terminal" way
        self._reader: threading.Thread | None = None

    # -- starting ------------------------------------------------------------------------------

    def start(self) -> Self:
        if self.way == "terminal":
            self._start_in_terminal()
        elif self.way == "background":
            shell = subprocess.run(
                ["bash", "-c", f'setsid make run </dev/null >>"{self.log_path}" 2>&1 & echo $!'],
                cwd=PROJECT_ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            )
            self.pid = int(shell.stdout.strip())
        else:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    ["scripts/run-stack.sh"],
                    cwd=PROJECT_ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid = self.process.pid
        return self

    def _start_in_terminal(self) -> None:
        terminal, user_side = os.openpty()

        def take_the_terminal() -> None:  # in the child, after setsid: the pty becomes its controlling terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            ["make", "run"],
            cwd=PROJECT_ROOT,
            env={**self.env, "TERM": "dumb"},
            stdin=user_side,
            stdout=user_side,
            stderr=user_side,
            start_new_session=True,
            preexec_fn=take_the_terminal,
        )
        os.close(user_side)
        self.pid, self._terminal = self.process.pid, terminal
        self._reader = threading.Thread(target=self._copy_terminal, daemon=True)
        self._reader.start()

    def _copy_terminal(self) -> None:
        """What the terminal shows, into the log (a pty nobody reads fills up and blocks the writers)."""
        with open(self.log_path, "ab", buffering=0) as log:
            while True:
                try:
                    data = os.read(self._terminal, 65536)
                except OSError:  # every writer closed its side
                    return
                if not data:
                    return
                log.write(data)

    def wait_until_up(self, timeout: float = 600) -> None:
        """Until the web server answers and the banner is out (every part has been started by then)."""
        wait_for(lambda: self._answers() and "API token:" in self.output(), timeout, "the stack", self.output)

    def _answers(self) -> bool:
        assert self.running, self.output()
        try:
            return httpx.get(f"{self.web_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # -- looking at it -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def processes(self) -> list[psutil.Process]:
        """The main process and every process below it, those in sessions of their own included (Envoy,
        MLServer, qcluster): what must be gone once the stack has stopped."""
        main = psutil.Process(self.pid)
        return [main, *main.children(recursive=True)]

    def part_pid(self, pattern: str) -> int:
        """The pid of the one process of the stack whose command line matches ``pattern``."""
        (pid,) = [p.pid for p in self.processes() if re.search(pattern, " ".join(p.cmdline()))]
        return pid

    # -- stopping ------------------------------------------------------------------------------

    def send(self, signum: int) -> None:
        """The signal as this way of starting delivers it: Ctrl-C is the terminal's, to the foreground job
        (SIGTERM there is `kill PID` from another shell); `kill -SIG -PGID` to a background job's group;
        a supervisor signals its main process alone."""
        if self.way == "terminal" and signum == signal.SIGINT:
            os.write(self._terminal, b"\x03")
        elif self.way == "background":
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)

    def wait_stopped(self, timeout: float) -> float:
        """Seconds until the main process exited; an AssertionError if it is still running after ``timeout``."""
        started = time.monotonic()
        wait_for(lambda: not self.running, timeout, "the stack to stop", self.output)
        if self.process is not None:
            self.process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL whatever is left of it (after a failed test)."""
        if self.pid is None:
            return
        try:
            left = self.processes()
        except psutil.NoSuchProcess:
            left = []
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        if self.process is not None and self.process.poll() is None:
            self.process.wait(5)
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None


def prepared_var_dir(template: Path, var_dir: Path) -> Path:
    """A copy of a var folder a stack has already run on (migrated, static files collected): the next
    stack's start skips that work."""
    shutil.copytree(template, var_dir, ignore=shutil.ignore_patterns("stack.env", ".stack-stopping", "prometheus"))
    return var_dir
