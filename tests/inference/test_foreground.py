"""run_in_foreground, what `make run` keeps alive for Envoy and each MLServer replica: stopped on request it
exits 0; a server that dies on its own is reported, with the signal that killed it, in its exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from deployments.inference.processes import describe_exit, exit_status
from tests.support.processes import PROJECT_ROOT, wait_for

# A LocalProcess whose server is `sleep`: the wrapper's behaviour, without starting a real server.
SLEEPER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from deployments.inference.processes import LocalProcess, run_in_foreground

    class Sleeper(LocalProcess):
        name = "the sleeper"

        def start(self):
            self.spawn(["sleep", "600"], cwd=Path.cwd())
            if sys.argv[2] == "never-ready":  # a server that takes its time to load
                print("starting", flush=True)
                self.wait_until(lambda: False, timeout=600, interval=0.1)
            return self

    sys.exit(run_in_foreground(Sleeper(Path(sys.argv[1])), "sleeping"))
    """
)


def start_wrapper(log: Path, readiness: str = "ready") -> tuple[subprocess.Popen, psutil.Process]:
    process = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(log), readiness],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == ("sleeping\n" if readiness == "ready" else "starting\n")
    server = wait_for(lambda: psutil.Process(process.pid).children(), 10, "the sleeper")[0]
    return process, server


@pytest.fixture
def started(tmp_path: Path):
    wrappers = []

    def start(readiness: str = "ready") -> tuple[subprocess.Popen, psutil.Process]:
        wrappers.append(start_wrapper(tmp_path / f"sleeper-{len(wrappers)}.log", readiness))
        return wrappers[-1]

    yield start
    for process, server in wrappers:
        if process.poll() is None:
            process.kill()
        if server.is_running():
            server.kill()
        process.communicate(timeout=10)


def stopped(server: psutil.Process) -> bool:
    return not server.is_running() or server.status() == psutil.STATUS_ZOMBIE


def test_a_server_killed_by_a_signal_is_reported_with_the_signal(started):
    process, server = started()
    os.kill(server.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=10)
    assert (process.returncode, stderr) == (137, "the sleeper killed by SIGKILL\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("readiness", ["ready", "never-ready"])
def test_a_stop_on_request_exits_0_and_stops_the_server_even_during_its_start(started, readiness, signum):
    process, server = started(readiness)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr) == (0, "")
    assert stopped(server)


@pytest.mark.parametrize(
    "returncode, described, status",
    [
        (-9, "killed by SIGKILL", 137),
        (-15, "killed by SIGTERM", 143),
        (1, "exited with status 1", 1),
        (0, "exited with status 0", 0),
    ],
)
def test_exit_described_as_a_shell_would(returncode, described, status):
    assert (describe_exit(returncode), exit_status(returncode)) == (described, status)
