"""The API docs work offline: /api/docs/ loads Swagger UI from our own static files (drf-spectacular-
sidecar), as WhiteNoise serves them after collectstatic with DEBUG off, and a real browser with no way
out to the internet renders the operations."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

from tests.support.processes import PROJECT_ROOT, WebServer

CHROMIUM = Path("/usr/bin/chromium")
# The assets a page loads: scripts, stylesheets, icons.
ASSET = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)


@pytest.fixture(scope="module")
def collected_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A var folder whose static/ holds what `manage.py collectstatic` collects, as in production."""
    var_dir = tmp_path_factory.mktemp("var")
    env = {**os.environ, "CONTROLPLANE_VAR_DIR": str(var_dir), "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return var_dir


def test_the_docs_page_loads_only_local_assets_and_every_one_answers(settings, collected_var_dir: Path):
    settings.DEBUG = False
    settings.STATIC_ROOT = collected_var_dir / "static"
    client = Client()  # a new client, so WhiteNoise reads the collected folder when it starts

    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = ASSET.findall(html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets), assets
    absolute = [asset for asset in assets if re.match(r"^(https?:)?//", asset)]
    assert absolute == []
    assert not re.search(r"https?://", html.split("<script>", 1)[0])  # nothing absolute in the head either
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert b"".join(response.streaming_content if response.streaming else [response.content])


def closed_port() -> int:
    """A port nothing listens on: a proxy there refuses every connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_dom(url: str, profile: Path) -> str:
    """The DOM headless Chromium rendered at ``url``, with every host but 127.0.0.1 unreachable."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # No name resolves but the loopback address, and anything that would still go out meets a closed proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{closed_port()}",
        "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def require_chromium() -> None:
    """Skip without Chromium on a workstation; in CI (.ci/run installs it) its absence is a failure."""
    if CHROMIUM.exists():
        return
    reason = f"headless Chromium ({CHROMIUM}) is not installed: apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def docs_server(collected_var_dir: Path, tmp_path: Path) -> Iterator[WebServer]:
    """gunicorn as `make run` starts it, DEBUG off, its static files collected."""
    require_chromium()
    workdir = tmp_path / "web"
    workdir.mkdir()
    (workdir / "static").symlink_to(collected_var_dir / "static")
    server = WebServer(workdir, DEBUG="false").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)  # the server runs on the test database (the docs read nothing from it)
def test_swagger_ui_renders_the_operations_with_no_internet(docs_server: WebServer, tmp_path: Path):
    dom = offline_dom(f"{docs_server.url}/api/docs/", tmp_path / "chromium")
    assert 'class="swagger-ui' in dom, dom[:2000]
    operations = re.findall(r'class="opblock-summary-path"[^>]*data-path="([^"]+)"', dom)
    assert "/deploy" in operations and "/delete/{task_id}" in operations, operations
    assert "opblock opblock-post" in dom
