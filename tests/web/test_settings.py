"""Settings a production web server depends on: `check --deploy` clean once the proxy switches are on,
and the generated secret key file (owner-only from its first byte, written once, first writer wins)."""

from __future__ import annotations

import multiprocessing
import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

from controlplane.settings import secret_key_file, write_secret_once
from tests.support.processes import PROJECT_ROOT, PROXY_ENV


def check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`manage.py check --deploy --fail-level WARNING` with DEBUG off, a strong key and ``env``."""
    base = {name: value for name, value in os.environ.items() if name not in PROXY_ENV}
    base.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "cp.example.com",
            "CONTROLPLANE_VAR_DIR": str(tmp_path),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    base.update(env)
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=base, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_behind_a_proxy(tmp_path: Path):
    result = check_deploy(tmp_path, **PROXY_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert result.stderr == ""


def test_without_the_switches_check_deploy_names_each_one(tmp_path: Path):
    result = check_deploy(tmp_path)
    assert result.returncode == 1
    # HSTS, the https redirect, and the two cookies: each is one of the switches, nothing else is named.
    assert sorted(set(re.findall(r"\((\S+\.[WE]\d+)\)", result.stderr))) == [
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
    ]


# -- the secret key file ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_file_is_owner_only_and_stable(tmp_path: Path):
    path = tmp_path / "var" / "secret_key"
    old_umask = os.umask(0)  # the most permissive umask: the mode must not depend on it
    try:
        first = secret_key_file(path)
    finally:
        os.umask(old_umask)
    assert len(first) >= 50
    assert mode(path) == 0o600
    assert secret_key_file(path) == first == path.read_text()
    assert os.listdir(path.parent) == ["secret_key"]  # no temporary file left


def test_the_key_is_owner_only_and_complete_before_it_has_its_name(tmp_path: Path, monkeypatch):
    path = tmp_path / "secret_key"
    seen = []
    real_link = os.link

    def link(source: str, target: Path) -> None:
        seen.append((mode(Path(source)), Path(source).read_text(), Path(source).parent))
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    old_umask = os.umask(0)  # the most permissive umask, while the file is written
    try:
        write_secret_once(path, "k" * 60)
    finally:
        os.umask(old_umask)
    assert seen == [(0o600, "k" * 60, tmp_path)]  # same folder, so the link is one atomic step


def test_a_second_writer_does_not_clobber_the_first(tmp_path: Path):
    path = tmp_path / "secret_key"
    write_secret_once(path, "first")
    write_secret_once(path, "second")
    assert path.read_text() == "first"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["secret_key"]


def test_a_writer_that_loses_the_race_uses_the_winners_key(tmp_path: Path, monkeypatch):
    path = tmp_path / "secret_key"
    real_link = os.link

    def link_after_a_rival(source: str, target: Path) -> None:
        monkeypatch.setattr(os, "link", real_link)
        write_secret_once(path, "the rival's key")  # another process finishes between our write and our link
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_a_rival)
    assert secret_key_file(path) == "the rival's key" == path.read_text()
    assert os.listdir(tmp_path) == ["secret_key"]


def _race(path: Path, start, keys) -> None:
    start.wait()
    keys.put(secret_key_file(path))


def test_processes_starting_together_all_get_the_one_key(tmp_path: Path):
    """As gunicorn's workers do on a fresh var/: each imports the settings at the same moment."""
    context = multiprocessing.get_context("fork")
    path = tmp_path / "secret_key"
    start, keys = context.Barrier(8), context.Queue()
    processes = [context.Process(target=_race, args=(path, start, keys)) for _ in range(8)]
    for process in processes:
        process.start()
    got = {keys.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(30)
    assert got == {path.read_text()}
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["secret_key"]
