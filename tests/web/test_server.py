"""The web server as `make run` starts it: gunicorn with controlplane/gunicorn.conf.py, on the embedded
default over plain http, and behind a TLS proxy once the environment says so."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from knox.models import AuthToken

from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory, UserFactory
from tests.support.processes import PROXY_ENV, WebServer

pytestmark = pytest.mark.django_db(transaction=True)  # the server reads what the test wrote

PASSWORD = "correct horse battery staple"
# What the proxy adds to every request it forwards from https://cp.example.com.
VIA_PROXY = {"Host": "cp.example.com", "X-Forwarded-Proto": "https"}


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(**env: str) -> WebServer:
        server = WebServer(tmp_path / f"web-{len(started)}", **env)
        started.append(server)
        (server.workdir / "static").mkdir(parents=True)
        (server.workdir / "static" / "probe.css").write_text("body { color: teal }")
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def stocked(operator) -> str:
    """A staff login, two tasks to list, and the operator's token."""
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    admin.set_password(PASSWORD)
    admin.save()
    EmbeddingModelFactory(id="minilm")
    DeploymentTaskFactory.create_batch(2, embedding_model_id="minilm")
    return AuthToken.objects.create(user=operator, expiry=None)[1]


def cookies(response: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def cookie_value(line: str) -> str:
    return line.split(";", 1)[0].split("=", 1)[1]


def log_in(url: str, headers: dict[str, str]) -> tuple[httpx.Response, str]:
    """Post the admin's login form as a browser does (the CSRF cookie back, with its token).

    Returns the answer and the CSRF cookie's Set-Cookie line."""
    form = httpx.get(f"{url}/admin/login/", headers=headers)
    assert form.status_code == 200
    csrf = cookies(form)["csrftoken"]
    return httpx.post(
        f"{url}/admin/login/?next=/admin/",
        headers={**headers, "Cookie": f"csrftoken={cookie_value(csrf)}"},
        data={"username": "root", "password": PASSWORD, "csrfmiddlewaretoken": cookie_value(csrf)},
    ), csrf


def test_the_default_serves_plain_http_with_static_files_and_an_access_log(web_server, stocked):
    server = web_server()
    auth = {"Authorization": f"Token {stocked}"}

    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert "strict-transport-security" not in health.headers
    # gunicorn leaves the scheme alone: an X-Forwarded-Proto nobody was told to trust changes nothing.
    listed = httpx.get(f"{server.url}/deploy?page_size=1", headers={**auth, "X-Forwarded-Proto": "https"})
    assert listed.status_code == 200
    assert listed.json()["next"].startswith(f"{server.url}/deploy?")
    assert httpx.get(f"{server.url}/static/probe.css").text == "body { color: teal }"  # WhiteNoise
    icon = httpx.get(f"{server.url}/favicon.ico")  # what every browser asks for first: no 404 to log
    assert icon.status_code == 204 and "max-age=86400" in icon.headers["cache-control"]

    login, csrf = log_in(server.url, {})
    assert (login.status_code, login.headers["location"]) == (302, "/admin/")
    session = cookies(login)["sessionid"]
    assert "Secure" not in session and "Secure" not in csrf and "HttpOnly" in session
    admin_page = httpx.get(f"{server.url}/admin/", headers={"Cookie": f"sessionid={cookie_value(session)}"})
    assert admin_page.status_code == 200 and "Auth tokens" in admin_page.text

    server.stop()
    access = server.stdout_path.read_text()
    assert re.search(r'"GET /healthz HTTP/1\.1" 200 ', access)
    assert re.search(r'"GET /favicon\.ico HTTP/1\.1" 204 ', access)
    assert re.search(r'"POST /admin/login/\?next=/admin/ HTTP/1\.1" 302 ', access)
    errors = server.stderr_path.read_text()
    assert f"Listening at: http://127.0.0.1:{server.port}" in errors
    assert len(re.findall(r"Booting worker with pid", errors)) == 2  # WEB_CONCURRENCY defaults to 2
    assert "GET /healthz" not in errors
    assert "Not Found" not in errors and " 404 " not in access


def test_behind_a_proxy_https_is_required_marked_and_trusted_from_the_header(web_server, stocked):
    server = web_server(ALLOWED_HOSTS="cp.example.com,127.0.0.1", **PROXY_ENV)
    auth = {"Authorization": f"Token {stocked}"}

    plain = httpx.get(f"{server.url}/deploy", headers={"Host": "cp.example.com", **auth})
    assert (plain.status_code, plain.headers["location"]) == (301, "https://cp.example.com/deploy")
    probe = httpx.get(f"{server.url}/healthz")  # probes come over plain http from inside
    assert probe.status_code == 200

    listed = httpx.get(f"{server.url}/deploy?page_size=1", headers={**VIA_PROXY, **auth})
    assert listed.status_code == 200
    assert listed.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
    assert listed.json()["next"].startswith("https://cp.example.com/deploy?")

    login, csrf = log_in(server.url, {**VIA_PROXY, "Origin": "https://cp.example.com"})
    assert (login.status_code, login.headers["location"]) == (302, "/admin/")
    session = cookies(login)["sessionid"]
    assert "Secure" in session and "Secure" in csrf
    # A form posted from another origin is refused, whatever the proxy says.
    forged, _ = log_in(server.url, {**VIA_PROXY, "Origin": "https://evil.example.net"})
    assert forged.status_code == 403
