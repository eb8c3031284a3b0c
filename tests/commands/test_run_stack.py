"""`make run` as an operator uses it, with real processes (Envoy, MLServer replicas, run_workers, the reconciler,
gunicorn): started from a terminal, with `setsid make run &` and under a supervisor, SIGINT or SIGTERM stops
every part, quickly and without an error line; the banner, var/stack.env and a part's death tell the truth."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import PROJECT_ROOT, wait_for
from tests.support.stack import Stack, fresh_environment, prepared_var_dir

pytestmark = pytest.mark.drill

# What the shell or make prints when a job ends badly: none of it may follow a requested stop.
ERROR_LINES = re.compile(
    r"^(make: \*\*\*.*|.*\b(Terminated|Killed|Interrupt)\b.*|.*starting it again.*)$", re.MULTILINE
)
STOP_SECONDS = 15  # the bound of a stop; what it takes is printed (pytest -s) and in the report


@pytest.fixture(scope="module")
def var_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A var folder migrated and with the static files collected once, copied by every stack below."""
    template = tmp_path_factory.mktemp("stack") / "var"
    env = fresh_environment(CONTROLPLANE_VAR_DIR=str(template))
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run(
            [".venv/bin/python", "manage.py", *command],
            cwd=PROJECT_ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return template


@pytest.fixture
def stacks(var_template: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    started: list[Stack] = []

    def start(way: str, replicas: int = 1, **env: str) -> Stack:
        stack = Stack(way, prepared_var_dir(var_template, tmp_path / f"var-{len(started)}"), replicas, **env)
        started.append(stack.start())
        stack.wait_until_up()
        return stack

    yield start
    for stack in started:
        stack.kill()


def left_running(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left


def stop(stack: Stack, signum: int) -> str:
    """Send ``signum`` as ``stack``'s way delivers it, check that every part is gone in time, and return
    what the stack printed from the signal on."""
    parts = stack.processes()
    shown = len(stack.output())
    stack.send(signum)
    seconds = stack.wait_stopped(60)
    print(f"{stack.way} {signal.Signals(signum).name}: stopped in {seconds:.1f} s", file=sys.stderr)
    after = stack.output()[shown:]
    wait_for(lambda: not left_running(parts), 5, "every part to be gone", lambda: "\n".join(left_running(parts)))
    assert seconds < STOP_SECONDS, after
    assert ERROR_LINES.findall(after) == [], after
    assert "run-stack: stopped" in after
    assert not (stack.var_dir / "stack.env").exists()
    if stack.process is not None:  # make ends as it was told to (it signals itself), the script with 0
        assert stack.process.returncode in {0, -signum}, after
    return after


def test_an_operators_stack_from_a_terminal(stacks):
    """Two replicas, an open browser tab, another shell's commands, a replica killed, then Ctrl-C."""
    stack = stacks("terminal", replicas=2)
    assert "(Envoy; 2 MLServer replica(s) behind it)" in stack.output()

    # Another shell in the same checkout: only where the var folder is (here a temporary one).
    fresh = fresh_environment(CONTROLPLANE_VAR_DIR=str(stack.var_dir))
    shown = subprocess.run(
        [
            ".venv/bin/python",
            "manage.py",
            "shell",
            "-v",
            "0",
            "-c",
            "from django.conf import settings; print(settings.INFERENCE_SERVER_URL, *settings.INFERENCE_REPLICA_URLS)",
        ],
        cwd=PROJECT_ROOT,
        env=fresh,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.stdout.split() == [stack.env["INFERENCE_SERVER_URL"], *stack.replica_urls], shown.stderr
    restored = subprocess.run(
        [".venv/bin/python", "manage.py", "restore_models", "--wait-for-server", "30"],
        cwd=PROJECT_ROOT,
        env=fresh,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr

    # A replica's MLServer killed: the log says so, and the replica is started again.
    port = stack.replica_urls[1].rsplit(":", 1)[1]
    server = psutil.Process(stack.part_pid(rf"cli replica .*--port {port}\b")).children()[0]
    server.kill()
    wait_for(
        lambda: f"run-stack: mlserver:{port} killed by SIGKILL; starting it again in 1s" in stack.output(),
        30,
        "the replica's death in the log",
        stack.output,
    )
    wait_for(lambda: replica_ready(stack.replica_urls[1]), 180, "the replica again", stack.output)

    with httpx.Client(base_url=stack.web_url) as tab:  # a keep-alive connection, as a browser keeps one
        assert tab.get("/healthz").status_code == 200
        stop(stack, signal.SIGINT)


def replica_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    "way, signum",
    [
        ("terminal", signal.SIGTERM),  # `kill PID` of make from another shell
        ("background", signal.SIGINT),  # `kill -INT -PGID`: make and the script started with SIGINT ignored
        ("background", signal.SIGTERM),
        ("supervisor", signal.SIGTERM),  # to the main process alone
        ("supervisor", signal.SIGINT),
    ],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else value,
)
def test_a_signal_stops_every_part_however_the_stack_was_started(stacks, way, signum):
    stop(stacks(way, WEB_CONCURRENCY="1", Q_WORKERS="1"), signum)
