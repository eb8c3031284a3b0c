"""var/stack.env: what a running `make run` chose, seen by manage.py in another shell (under what that shell
sets itself), ignored once the stack that wrote it is gone, and one stack per var folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import stack_env
from tests.support.processes import PROJECT_ROOT
from tests.support.stack import fresh_environment

PYTHON = ".venv/bin/python"
SHOW_SETTINGS = "from django.conf import settings; print(settings.INFERENCE_SERVER_URL, settings.MODEL_REPOSITORY_ROOT)"


@pytest.fixture
def stack_process() -> Iterator[subprocess.Popen]:
    """A process that looks like a running scripts/run-stack.sh (its command line names the script)."""
    process = subprocess.Popen(["bash", "-c", "exec -a scripts/run-stack.sh sleep 600"])
    yield process
    process.kill()
    process.wait()


def run(*args: str, var_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *args],
        cwd=PROJECT_ROOT,
        env=fresh_environment(CONTROLPLANE_VAR_DIR=str(var_dir), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_stack_env(var_dir: Path, pid: int) -> None:
    written = run(
        "-m",
        "controlplane.stack_env",
        "write",
        str(pid),
        "INFERENCE_SERVER_URL",
        "MODEL_REPOSITORY_ROOT",
        "UNSET_ONE",
        var_dir=var_dir,
        INFERENCE_SERVER_URL="http://127.0.0.1:18080",
        MODEL_REPOSITORY_ROOT="/srv/the stack's repository",
    )
    assert written.returncode == 0, written.stderr


def test_manage_py_in_another_shell_sees_the_running_stacks_settings(tmp_path: Path, stack_process):
    write_stack_env(tmp_path, stack_process.pid)
    assert (tmp_path / "stack.env").stat().st_mode & 0o777 == 0o600
    assert "UNSET_ONE" not in (tmp_path / "stack.env").read_text()

    shown = run("manage.py", "shell", "-v", "0", "-c", SHOW_SETTINGS, var_dir=tmp_path)
    assert (shown.stdout, shown.stderr) == ("http://127.0.0.1:18080 /srv/the stack's repository\n", "")


def test_what_the_environment_sets_wins_over_the_file(tmp_path: Path, stack_process):
    write_stack_env(tmp_path, stack_process.pid)
    environ = {"CONTROLPLANE_VAR_DIR": str(tmp_path), "INFERENCE_SERVER_URL": "http://other:1"}
    assert stack_env.load(environ) == {"MODEL_REPOSITORY_ROOT": "/srv/the stack's repository"}
    assert environ["INFERENCE_SERVER_URL"] == "http://other:1"


def test_the_file_of_a_stack_that_is_gone_is_ignored_with_a_warning(tmp_path: Path, stack_process, capsys):
    write_stack_env(tmp_path, stack_process.pid)
    stack_process.kill()
    stack_process.wait()

    environ = {"CONTROLPLANE_VAR_DIR": str(tmp_path)}
    assert stack_env.load(environ) == {}
    assert environ == {"CONTROLPLANE_VAR_DIR": str(tmp_path)}
    assert capsys.readouterr().err == (
        f"{tmp_path / 'stack.env'} is stale (the stack that wrote it, pid {stack_process.pid}, is gone): ignored\n"
    )


def test_a_process_that_took_a_dead_stacks_pid_is_no_stack(tmp_path: Path):
    (tmp_path / "stack.env").write_text(f"# make run (pid {os.getpid()}): ...\nINFERENCE_SERVER_URL=http://x:1\n")
    assert stack_env.load({"CONTROLPLANE_VAR_DIR": str(tmp_path)}) == {}


def test_one_stack_per_var_folder(tmp_path: Path, stack_process):
    environ = {"CONTROLPLANE_VAR_DIR": str(tmp_path)}
    write_stack_env(tmp_path, stack_process.pid)
    running = run("-m", "controlplane.stack_env", "running", var_dir=tmp_path)
    assert (running.returncode, running.stderr) == (
        1,
        f"a stack already runs from {tmp_path} (pid {stack_process.pid}): stop it first\n",
    )
    stack_process.kill()
    stack_process.wait()
    assert stack_env.read(stack_env.stack_env_path(environ))[0] == stack_process.pid
    assert run("-m", "controlplane.stack_env", "running", var_dir=tmp_path).returncode == 0  # a stale file
