"""How the supervisor words a child's end: a signal is named, never reported as an exit code."""

from __future__ import annotations

import signal
import subprocess
import sys

from deployments.inference.processes import describe_exit


def test_a_child_killed_by_a_signal_is_said_to_be_killed_by_it():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    assert describe_exit(child.wait(timeout=30)) == "killed by SIGKILL"


def test_a_child_that_exits_says_its_code():
    child = subprocess.run([sys.executable, "-c", "raise SystemExit(3)"], check=False)
    assert describe_exit(child.returncode) == "exited with status 3"
