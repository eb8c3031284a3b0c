"""``var/stack.env``: the addresses and folders a running ``make run`` chose, for the commands of other shells.

scripts/run-stack.sh writes it once it knows them (``python -m controlplane.stack_env write``) and removes it
when it stops; ``manage.py`` reads it before the settings, so ``manage.py restore_models`` in a second shell
talks to the running stack's replicas, not to the default ports. A variable set in the environment wins
over the file. The file names the pid of the stack that wrote it: one whose stack is gone (killed before it
could remove the file) is stale and ignored, with a warning.

    # make run (pid 4242): the stack's addresses and folders; removed when it stops
    INFERENCE_SERVER_URL=http://127.0.0.1:8080
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
FILE_NAME = "stack.env"
HEADER = re.compile(r"^# make run \(pid (\d+)\)")
STACK_SCRIPT = "run-stack.sh"


def stack_env_path(environ: MutableMapping[str, str]) -> Path:
    """Where a stack started with ``environ`` keeps the file: in its var folder (CONTROLPLANE_VAR_DIR)."""
    return Path(environ.get("CONTROLPLANE_VAR_DIR") or BASE_DIR / "var") / FILE_NAME


def stack_is_running(pid: int) -> bool:
    """True if ``pid`` is a live run-stack.sh (a pid is reused: a live process of another program is no stack)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and any(STACK_SCRIPT in part for part in process.cmdline())
    except psutil.Error:
        return False


def read(path: Path) -> tuple[int | None, dict[str, str]]:
    """The pid the file names and its variables; (None, {}) when there is no file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None, {}
    header = HEADER.match(lines[0]) if lines else None
    variables = dict(line.split("=", 1) for line in lines if line and not line.startswith("#") and "=" in line)
    return (int(header.group(1)) if header else None), variables


def load(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set in ``environ`` what the running stack's file holds and ``environ`` lacks; return what was set."""
    path = stack_env_path(environ)
    pid, variables = read(path)
    if not variables:
        return {}
    if pid is None or not stack_is_running(pid):
        print(f"{path} is stale (the stack that wrote it, pid {pid}, is gone): ignored", file=sys.stderr)
        return {}
    added = {name: value for name, value in variables.items() if name not in environ}
    environ.update(added)
    return added


def write(path: Path, pid: int, names: Sequence[str], environ: MutableMapping[str, str]) -> None:
    """Write the file for the stack ``pid``: each of ``names`` with its value in ``environ``, owner-only."""
    lines = [f"# make run (pid {pid}): the stack's addresses and folders; removed when it stops"]
    lines += [f"{name}={environ[name]}" for name in names if name in environ]
    temporary = path.with_name(f".{path.name}.{pid}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)  # whole or not at all, for a command reading it right now


def main(argv: Sequence[str]) -> int:
    """``write PID NAME...`` (run-stack.sh, once it exported them), or ``running``: exit 1 (saying so) if a
    live stack already owns this var folder's file, else 0."""
    path = stack_env_path(os.environ)
    if argv[:1] == ["write"] and len(argv) >= 2:
        write(path, int(argv[1]), argv[2:], os.environ)
        return 0
    if argv == ["running"]:
        pid, _ = read(path)
        if pid is not None and stack_is_running(pid):
            print(f"a stack already runs from {path.parent} (pid {pid}): stop it first", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m controlplane.stack_env write PID NAME... | running", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
