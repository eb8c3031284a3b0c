"""Fixtures of the admin's tests: staff clients with and without the right to act."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from tests.support.factories import UserFactory


@pytest.fixture
def admin_user(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def viewer_client(db) -> Client:
    """Staff who may look at the task history but not retry, cancel, deploy or delete."""
    user = UserFactory(username="viewer", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_deploymenttask", "view_deletiontask", "view_embeddingmodel"])
    )
    client = Client()
    client.force_login(user)
    return client
