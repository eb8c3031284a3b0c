"""register_models from an MLflow registry (the session's real server): every version of a model, or
every model carrying an alias, with --dry-run."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from deployments.models import EmbeddingModel
from tests.support.mlflow import NAME, log_model_folder, register_version, set_alias

pytestmark = [pytest.mark.mlflow, pytest.mark.django_db]


def run(*args: str) -> str:
    out = StringIO()
    call_command("register_models", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def tracking(mlflow_registry, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_registry["uri"])
    return mlflow_registry


def test_every_version_of_a_registered_model(tracking):
    dry = run("--mlflow-model", NAME, "--dry-run")
    assert f"models:/{NAME}/1" in dry and f"models:/{NAME}/2" in dry and "would register 2 model(s)" in dry
    assert not EmbeddingModel.objects.exists()

    assert "Registered 2 model(s)" in run("--mlflow-model", NAME)
    assert dict(EmbeddingModel.objects.values_list("id", "source")) == {
        f"{NAME}-v1": f"models:/{NAME}/1",
        f"{NAME}-v2": f"models:/{NAME}/2",
    }
    assert "Registered 0 model(s); 2 already registered" in run("--mlflow-model", NAME)


def test_every_model_carrying_an_alias_follows_the_alias(tracking, minilm_dir):
    other = "other-embedder"
    version = register_version(tracking["uri"], other, log_model_folder(tracking["uri"], minilm_dir))
    set_alias(tracking["uri"], other, "champion", version)

    run("--mlflow-alias", "champion", "--tracking-uri", tracking["uri"])

    models = {m.id: m for m in EmbeddingModel.objects.all()}
    assert {m.source for m in models.values()} == {f"models:/{NAME}@champion", f"models:/{other}@champion"}
    assert {m.mlflow_tracking_uri for m in models.values()} == {tracking["uri"]}  # named, so kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mlflow-model", "no-such-model"], "MLflow says"),
        (["--mlflow-alias", "nobody-has-this"], "no registered model has the alias"),
        (["--mlflow-model", NAME, "--mlflow-alias", "champion"], "exactly one"),
        ([], "exactly one"),
    ],
)
def test_what_cannot_be_registered_is_said_and_nothing_is(tracking, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not EmbeddingModel.objects.exists()


def test_a_tracking_uri_the_operator_did_not_allow_is_refused_and_sent_nothing(elsewhere, mlflow_token, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    monkeypatch.delenv("MLFLOW_ALLOWED_TRACKING_URIS", raising=False)
    for selection in (["--mlflow-model", NAME], ["--mlflow-alias", "champion"]):
        with pytest.raises(
            CommandError, match=rf"{elsewhere.url} is not allowed; allowed: https://mlflow\.example\.com"
        ):
            run(*selection, "--tracking-uri", elsewhere.url, "--dry-run")
    assert elsewhere.received == [] and not EmbeddingModel.objects.exists()
