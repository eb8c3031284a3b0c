"""Only MLflow servers the operator allowed are sent anything (and so MLflow's credentials): the model's own
tracking URI and where the registry says the artifacts are, compared by origin."""

from __future__ import annotations

import pytest

from deployments.inference import SourceRefused, open_source
from deployments.inference.allowed_servers import (
    allow_list_problems,
    allowed_origins,
    check_artifact_location,
    origin,
    tracking_server_refusal,
    without_credentials,
)
from deployments.inference.errors import SourceUnavailable
from deployments.inference.mlflow_source import mlflow_ui_url, models_with_alias, registered_versions
from deployments.inference.server import free_port

OURS = "https://mlflow.example.com"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("HTTPS://MLflow.Example.COM/", "https://mlflow.example.com"),
        ("https://mlflow.example.com:443/mlflow?x=1", "https://mlflow.example.com"),
        ("http://mlflow.example.com:80", "http://mlflow.example.com"),
        ("http://mlflow.example.com:5000", "http://mlflow.example.com:5000"),
        ("http://[::1]:5000/", "http://[::1]:5000"),
        ("databricks://prod", "databricks://prod"),
    ],
)
def test_an_origin_is_the_scheme_the_lower_cased_host_and_the_effective_port(uri, expected):
    assert origin(uri) == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://user:secret@mlflow.example.com", "user or password"),
        ("https://mlflow.example.com@evil.example/", "user or password"),
        ("mlflow.example.com:5000", "not scheme://host"),
        ("https://", "not scheme://host"),
        ("http://mlflow.example.com:99999", "port"),
    ],
)
def test_a_uri_with_credentials_or_without_a_host_is_no_origin(uri, reason):
    with pytest.raises(ValueError, match=reason):
        origin(uri)


def test_by_default_only_the_tracking_uri_s_server_is_allowed():
    environ = {"MLFLOW_TRACKING_URI": "http://MLflow.example.com:80/"}
    assert allowed_origins(environ) == ["http://mlflow.example.com"]
    assert tracking_server_refusal("http://mlflow.example.com/other/path", environ) is None
    refusal = tracking_server_refusal("http://mlflow.example.com:8080", environ)
    assert refusal == (
        "MLflow tracking server http://mlflow.example.com:8080 is not allowed; allowed: http://mlflow.example.com "
        "(the operator adds servers to MLFLOW_ALLOWED_TRACKING_URIS)"
    )
    assert "is not allowed" in tracking_server_refusal("http://169.254.169.254", environ)
    assert "user or password" in tracking_server_refusal("http://u:p@mlflow.example.com", environ)
    assert "allowed: none" in tracking_server_refusal(OURS, {})


def test_the_allow_list_adds_servers_and_a_malformed_entry_allows_nothing():
    environ = {
        "MLFLOW_TRACKING_URI": OURS,
        "MLFLOW_ALLOWED_TRACKING_URIS": " https://other.example.com:8443/mlflow , https://u:p@bad.example, nohost",
    }
    assert allowed_origins(environ) == [OURS, "https://other.example.com:8443"]
    assert tracking_server_refusal("https://OTHER.example.com:8443", environ) is None
    assert tracking_server_refusal("https://bad.example", environ) is not None
    assert allow_list_problems(environ) == [
        "'https://bad.example' holds a user or password: credentials come from the environment",
        "'nohost' is not scheme://host[:port]",
    ]


def test_a_local_store_as_the_operator_s_own_tracking_uri_is_allowed_by_name():
    environ = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    assert tracking_server_refusal("sqlite:///mlflow.db", environ) is None
    assert allowed_origins(environ) == []


@pytest.mark.parametrize(
    "location",
    [
        "mlflow-artifacts:/0/abc/artifacts",  # the tracking server's own proxy
        "mlflow-artifacts://MLFLOW.example.com/0/abc/artifacts",
        f"{OURS}/api/2.0/mlflow-artifacts/artifacts/0/abc",
        "s3://models-bucket/0/abc/artifacts",  # listed by the operator
    ],
)
def test_artifacts_on_the_tracking_server_or_a_listed_store_may_be_read(location):
    environ = {"MLFLOW_TRACKING_URI": OURS, "MLFLOW_ALLOWED_TRACKING_URIS": "s3://models-bucket"}
    check_artifact_location(location, OURS, "models:/m/1", environ)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("mlflow-artifacts://evil.example:5000/0/abc", "on https://evil.example:5000, not on the tracking server"),
        ("https://evil.example/artifacts", "on https://evil.example, not on the tracking server"),
        ("http://mlflow.example.com/artifacts", "on http://mlflow.example.com, not on the tracking server"),
        ("s3://someone-elses-bucket/x", "on s3://someone-elses-bucket"),
        ("file:///etc", "a path on this machine"),
        ("/var/lib/secrets/model", "a path on this machine"),
        ("models:/m-123", "no host, not on the tracking server"),
        ("ftp:///x", "no host, not on the tracking server"),
        ("https://u:p@mlflow.example.com/x", "user or password"),
    ],
)
def test_artifacts_anywhere_else_are_refused_before_they_are_read(location, reason):
    environ = {"MLFLOW_TRACKING_URI": OURS, "MLFLOW_ALLOWED_TRACKING_URIS": "s3://models-bucket"}
    with pytest.raises(SourceRefused, match=reason):
        check_artifact_location(location, OURS, "models:/m/1", environ)


def test_dbfs_artifacts_are_read_through_a_databricks_tracking_server_only():
    environ = {"MLFLOW_TRACKING_URI": "databricks"}
    check_artifact_location("dbfs:/databricks/mlflow-tracking/1/abc", "databricks", "models:/m/1", environ)
    with pytest.raises(SourceRefused):
        check_artifact_location("dbfs:/databricks/mlflow-tracking/1/abc", OURS, "models:/m/1", environ)


@pytest.mark.parametrize(
    "call",
    [
        lambda server: open_source("models:/name/1", [], server).resolve(),
        lambda server: open_source(f"runs:/{'a' * 32}/model", [], server).resolve(),
        lambda server: registered_versions(server, "name"),
        lambda server: models_with_alias(server, "champion"),
    ],
    ids=["version", "run", "register_models --mlflow-model", "register_models --mlflow-alias"],
)
def test_a_server_not_allowed_is_sent_nothing(call, elsewhere, mlflow_token, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", OURS)
    monkeypatch.delenv("MLFLOW_ALLOWED_TRACKING_URIS", raising=False)
    with pytest.raises(SourceRefused, match=rf"{elsewhere.url} is not allowed; allowed: {OURS}"):
        call(elsewhere.url)
    assert elsewhere.received == []  # not a single call, so not the token


def test_a_server_allowed_is_called(elsewhere, mlflow_token, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", elsewhere.url)
    with pytest.raises(SourceRefused, match=r"MLflow says .*recorded"):
        open_source("models:/name/1", [], elsewhere.url).resolve()
    assert elsewhere.received and elsewhere.received[0].authorization == f"Bearer {mlflow_token}"


def test_databricks_is_a_server_to_allow_by_its_profile():
    environ = {"MLFLOW_TRACKING_URI": OURS, "MLFLOW_ALLOWED_TRACKING_URIS": "databricks"}
    assert tracking_server_refusal("databricks", environ) is None
    assert "databricks://other is not allowed" in tracking_server_refusal("databricks://other", environ)


@pytest.mark.parametrize(
    "tracking_uri", ["javascript:alert(1)//", "JavaScript:alert(1)", "data:text/html,x", "databricks", "file:///x"]
)
def test_the_mlflow_ui_link_is_only_ever_a_web_address(tracking_uri):
    """The admin renders it as a link: another scheme (javascript:, data:) would run in the operator's page."""
    assert mlflow_ui_url({"tracking_uri": tracking_uri, "registered_model": "m", "version": "1"}) == ""
    web = mlflow_ui_url({"tracking_uri": OURS, "registered_model": 'm"><script>', "version": "1"})
    assert web == f"{OURS}/#/models/m%22%3E%3Cscript%3E/versions/1"


def test_a_password_in_the_tracking_uri_is_never_repeated(monkeypatch):
    assert (
        without_credentials("https://deployer:secret@mlflow.example.com:8443/x") == "https://mlflow.example.com:8443/x"
    )
    assert without_credentials(OURS) == OURS
    assert "secret" not in tracking_server_refusal("https://deployer:secret@evil.example", {})
    with pytest.raises(SourceRefused) as refused:
        check_artifact_location("https://deployer:secret@evil.example/x", OURS, "models:/m/1", {})
    assert "secret" not in str(refused.value)

    server = f"http://deployer:secret@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(SourceUnavailable) as unavailable:
        open_source("models:/name/1", []).resolve()
    assert "tracking server http://127.0.0.1:" in str(unavailable.value) and "secret" not in str(unavailable.value)
