"""Fixtures of the operators' tests: a staff client for the admin, and the control plane's fixtures
(real qcluster workers, the session MLServer as the configured server) reused from tests/control."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from tests.control.conftest import inference_settings, qcluster, sources_root  # noqa: F401  (fixtures)
from tests.control.factories import UserFactory


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
