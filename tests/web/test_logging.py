"""A server error is logged with its traceback on the console, in both LOG_FORMATs: the settings are read
from the environment by a fresh process, as the web server reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.support.processes import PROJECT_ROOT


class Kaboom(RuntimeError):
    pass


def exploding_view(request: HttpRequest) -> HttpResponse:
    raise Kaboom("the view fell over")


# The test's URLs: the project's, plus a view that raises (ROOT_URLCONF points here in the child process).
urlpatterns = [path("admin/explode", exploding_view)]
handler500 = "controlplane.errors.server_error"

# Run in the child: Django set up from the environment, one request to the view that raises.
REQUEST_A_500 = """
import django
from django.test import Client
from django.test.utils import override_settings, setup_test_environment

django.setup()
setup_test_environment()
with override_settings(ROOT_URLCONF="tests.web.test_logging"):
    response = Client(raise_request_exception=False).get("/admin/explode")
print(response.status_code)
"""


def request_a_server_error(tmp_path: Path, log_format: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "LOG_FORMAT": log_format,
        "DEBUG": "false",
        "CONTROLPLANE_VAR_DIR": str(tmp_path),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", REQUEST_A_500], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip()), result.stderr


def test_a_server_error_is_logged_with_its_traceback_in_text(tmp_path: Path):
    status, console = request_a_server_error(tmp_path, "text")
    assert status == 500
    assert "Internal Server Error: /admin/explode" in console
    assert "Traceback (most recent call last)" in console
    assert 'raise Kaboom("the view fell over")' in console and "Kaboom: the view fell over" in console


def test_a_server_error_is_logged_with_its_traceback_in_json(tmp_path: Path):
    status, console = request_a_server_error(tmp_path, "json")
    assert status == 500
    records = [json.loads(line) for line in console.splitlines() if line.strip()]
    (error,) = [record for record in records if record["logger"] == "django.request"]
    assert error["level"] == "ERROR" and error["message"] == "Internal Server Error: /admin/explode"
    assert "Traceback (most recent call last)" in error["exc_info"]
    assert "Kaboom: the view fell over" in error["exc_info"]
