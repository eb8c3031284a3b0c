"""API tokens in the admin: one row per token with the key's start and its expiry; deleting one revokes it."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

TOKENS_URL = "/admin/knox/authtoken/"


def token_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_each_token_is_listed_with_its_start_user_and_expiry_never_its_key(admin_client, operator):
    live, live_key = AuthToken.objects.create(user=operator, expiry=timedelta(days=3))
    _, expired_key = AuthToken.objects.create(user=operator, expiry=timedelta(days=1))
    AuthToken.objects.exclude(pk=live.pk).update(expiry=timezone.now() - timedelta(hours=1))
    page = admin_client.get(TOKENS_URL).content.decode()
    for key in (live_key, expired_key):
        assert f"{key[:8]}…" in page
        assert key[:9] not in page and hash_of(key) in page  # the row links by digest, shows 8 characters
    assert page.count("icon-yes.svg") == 1 and page.count("icon-no.svg") == 1  # expired: one yes, one no
    expired_only = admin_client.get(TOKENS_URL, {"expired": "yes"}).content.decode()
    assert f"{expired_key[:8]}…" in expired_only and f"{live_key[:8]}…" not in expired_only


def hash_of(key: str) -> str:
    return AuthToken.objects.get(token_key=key[:15]).digest


def test_deleting_a_token_in_the_admin_revokes_it(admin_client, operator):
    token, key = AuthToken.objects.create(user=operator, expiry=None)
    _, other_key = AuthToken.objects.create(user=operator, expiry=None)
    assert token_client(key).get("/deploy").status_code == 200
    response = admin_client.post(f"{TOKENS_URL}{token.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    refused = token_client(key).get("/deploy")
    assert refused.status_code == 401 and refused.json() == {"detail": "Invalid token."}
    assert token_client(other_key).get("/deploy").status_code == 200  # only that one


def test_the_delete_action_revokes_the_selected_tokens(admin_client, operator):
    tokens = [AuthToken.objects.create(user=operator, expiry=None) for _ in range(3)]
    data = {"action": "delete_selected", ACTION_CHECKBOX_NAME: [t.pk for t, _ in tokens[:2]], "post": "yes"}
    assert admin_client.post(TOKENS_URL, data, follow=True).status_code == 200
    assert [token_client(key).get("/deploy").status_code for _, key in tokens] == [401, 401, 200]


def shown(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_a_token_added_in_the_admin_is_shown_once_and_works(admin_client, operator):
    response = admin_client.post(
        f"{TOKENS_URL}add/", {"user": operator.pk, "expiry_0": "", "expiry_1": ""}, follow=True
    )
    (key,) = [m.group(1) for m in map(re.compile(r"TOKEN ([0-9a-f]{64})").fullmatch, shown(response)) if m]
    assert token_client(key).get("/deploy").status_code == 200
    assert AuthToken.objects.get(user=operator).expiry is None


def test_only_the_expiry_of_a_token_can_be_changed(admin_client, operator):
    token, key = AuthToken.objects.create(user=operator, expiry=None)
    page = admin_client.get(f"{TOKENS_URL}{token.pk}/change/").content.decode()
    assert f"{key[:8]}…" in page and 'name="expiry_0"' in page
    assert 'name="user"' not in page and 'name="digest"' not in page
    response = admin_client.post(
        f"{TOKENS_URL}{token.pk}/change/", {"expiry_0": "2000-01-01", "expiry_1": "00:00:00"}, follow=True
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.expiry.year == 2000
    assert token_client(key).get("/deploy").status_code == 401
