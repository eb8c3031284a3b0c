"""API tokens: made by ``create_token``, sent as ``Authorization: Token <key>`` (or ``Bearer <key>``), stored
as a digest only, refused (401, JSON) once expired or deleted."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.support.factories import UserFactory

pytestmark = pytest.mark.django_db


def create_token(*args: str) -> tuple[str, str]:
    """Run ``create_token``: (the key it printed on stdout, what it said on stderr)."""
    out, err = StringIO(), StringIO()
    call_command("create_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def client_with(key: str, prefix: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{prefix} {key}")
    return client


def deploy(client: APIClient):
    return client.post("/deploy", data=json.dumps({"embedding_model_id": "minilm"}), content_type="application/json")


def assert_refused(response) -> None:
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Invalid token."}
    assert response["WWW-Authenticate"] == "Token"


def test_a_created_token_is_printed_alone_and_works(operator, packaged_model):
    out, err = create_token(operator.username)
    (key,) = out.splitlines()  # stdout holds the key alone: T=$(manage.py create_token USER)
    assert len(key) == 64
    assert "never expires" in err and key not in err
    client = client_with(key)
    assert deploy(client).status_code == 202
    assert client.get("/deploy").status_code == 200


def test_a_token_is_stored_as_its_digest_not_in_plain_text(operator):
    out, _ = create_token(operator.username)
    key = out.strip()
    token = AuthToken.objects.get(user=operator)
    assert token.digest == hash_token(key) != key
    with connection.cursor() as cursor:  # no column of the row holds the key
        cursor.execute(f"SELECT * FROM {AuthToken._meta.db_table}")
        (row,) = cursor.fetchall()
    assert not any(key in str(value) for value in row)


def test_each_call_makes_a_new_token_and_the_old_ones_keep_working(operator):
    first, second = create_token(operator.username)[0].strip(), create_token(operator.username)[0].strip()
    assert first != second
    assert AuthToken.objects.filter(user=operator).count() == 2
    for key in (first, second):
        assert client_with(key).get("/deploy").status_code == 200


def test_expires_days_sets_the_expiry(operator):
    _, err = create_token(operator.username, "--expires-days", "2")
    token = AuthToken.objects.get(user=operator)
    assert abs(token.expiry - (timezone.now() + timedelta(days=2))) < timedelta(minutes=1)
    assert f"expires {token.expiry:%Y-%m-%d}" in err


def test_the_default_expiry_comes_from_the_settings(operator, settings):
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": timedelta(days=7)}
    create_token(operator.username)
    token = AuthToken.objects.get(user=operator)
    assert abs(token.expiry - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)


def test_an_expired_token_is_refused_with_401(operator, packaged_model):
    key = create_token(operator.username, "--expires-days", "1")[0].strip()
    client = client_with(key)
    assert client.get("/deploy").status_code == 200
    AuthToken.objects.filter(user=operator).update(expiry=timezone.now() - timedelta(seconds=1))
    assert_refused(client.get("/deploy"))
    assert_refused(deploy(client))
    assert AuthToken.objects.filter(user=operator).exists()  # refused, not deleted behind the admin's back


def test_a_deleted_token_is_refused_with_401(operator):
    key = create_token(operator.username)[0].strip()
    client = client_with(key)
    assert client.get("/deploy").status_code == 200
    AuthToken.objects.filter(digest=hash_token(key)).delete()
    assert_refused(client.get("/deploy"))


def test_a_token_of_an_inactive_user_is_refused(operator):
    key = create_token(operator.username)[0].strip()
    operator.is_active = False
    operator.save()
    response = client_with(key).get("/deploy")
    assert response.status_code == 401
    assert "inactive" in response.json()["detail"]


@pytest.mark.parametrize("prefix", ["Bearer", "bearer", "TOKEN"])
def test_the_key_is_taken_as_a_bearer_token_too_in_any_case(operator, packaged_model, prefix):
    key = create_token(operator.username)[0].strip()
    client = client_with(key, prefix)
    assert client.get("/deploy").status_code == 200
    assert deploy(client).status_code == 202
    assert_refused(client_with(key[:-1] + ("0" if key[-1] != "0" else "1"), prefix).get("/deploy"))


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b"])
def test_a_bearer_header_without_one_key_is_401_saying_so(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/deploy")
    assert response.status_code == 401
    assert response.json()["detail"].startswith("Invalid token header.")


def test_the_schema_offers_the_token_and_the_bearer_scheme_either_one_enough(anonymous):
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = json.loads(response.content)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert schemes["tokenAuth"]["type"] == "apiKey" and '"Token"' in schemes["tokenAuth"]["description"]
    deploy_security = schema["paths"]["/deploy"]["post"]["security"]
    assert {"tokenAuth": []} in deploy_security and {"bearerAuth": []} in deploy_security


def test_a_key_that_differs_after_the_stored_prefix_is_refused(operator):
    key = create_token(operator.username)[0].strip()
    forged = key[:15] + ("0" if key[15] != "0" else "1") + key[16:]
    assert_refused(client_with(forged).get("/deploy"))


def test_create_token_deletes_the_users_expired_tokens_only(operator):
    other = UserFactory(username="other")
    create_token(operator.username)
    create_token(other.username)
    AuthToken.objects.update(expiry=timezone.now() - timedelta(days=1))
    key = create_token(operator.username)[0].strip()
    assert list(AuthToken.objects.filter(user=operator).values_list("digest", flat=True)) == [hash_token(key)]
    assert AuthToken.objects.filter(user=other).count() == 1


@pytest.mark.parametrize(
    "args,named",
    [
        (["nobody"], "'nobody'"),
        (["operator", "--expires-days", "0"], "--expires-days"),
        (["operator", "--expires-days", "-3"], "--expires-days"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(operator, args, named):
    with pytest.raises(CommandError) as refused:
        create_token(*args)
    assert refused.value.returncode == 2
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert not AuthToken.objects.exists()


def test_no_token_for_an_inactive_user(operator):
    operator.is_active = False
    operator.save()
    with pytest.raises(CommandError, match="inactive"):
        create_token(operator.username)
