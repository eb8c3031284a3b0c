"""One clock: every time an operator reads, in the admin, the dashboard and the timeline, is shown as
deployments.clock shows it (``2026-11-29 11:46:23 UTC``), in the display zone (TIME_ZONE), labelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import formats, timezone
from knox.models import AuthToken

from deployments.clock import format_time, relative_time
from deployments.models import DeploymentTask, EmbeddingModel, TaskEvent
from tests.support.factories import EmbeddingModelFactory, FailedDeploymentFactory, FinishedDeploymentFactory

pytestmark = pytest.mark.django_db

DEPLOYS_URL = "/admin/deployments/deploymenttask/"
# 11:46:23.345256 UTC: the microseconds must not show.
WINTER = datetime(2026, 11, 29, 11, 46, 23, 345256, tzinfo=UTC)
SUMMER = datetime(2026, 7, 1, 9, 5, 7, 999999, tzinfo=UTC)


def test_one_format_to_the_second_with_the_zone(settings):
    assert format_time(WINTER) == "2026-11-29 11:46:23 UTC"
    assert format_time(None) == "—"
    settings.TIME_ZONE = "Europe/Paris"
    assert format_time(WINTER) == "2026-11-29 12:46:23 CET"
    assert format_time(SUMMER) == "2026-07-01 11:05:07 CEST"
    settings.TIME_ZONE = "Asia/Kolkata"
    assert format_time(WINTER) == "2026-11-29 17:16:23 IST"


def test_djangos_own_date_format_is_the_same_as_the_clocks(settings):
    for zone in ("UTC", "Europe/Paris", "America/New_York"):
        settings.TIME_ZONE = zone
        for moment in (WINTER, SUMMER):
            assert formats.localize(timezone.template_localtime(moment)) == format_time(moment)


def test_relative_times_in_the_largest_whole_unit():
    now = WINTER
    assert relative_time(now - timedelta(seconds=3), now) == "3 s ago"
    assert relative_time(now - timedelta(minutes=3, seconds=50), now) == "3 min ago"
    assert relative_time(now - timedelta(hours=5), now) == "5 h ago"
    assert relative_time(now - timedelta(days=2, hours=23), now) == "2 d ago"
    assert relative_time(now + timedelta(minutes=2, seconds=1), now) == "in 2 min"
    assert relative_time(now, now) == "just now"


def at(task, moment: datetime) -> None:
    DeploymentTask.objects.filter(pk=task.pk).update(created_at=moment, started_at=moment, finished_at=moment)


def test_the_task_list_shows_how_long_ago_with_the_time_as_its_tooltip(admin_client, settings):
    task = FailedDeploymentFactory()
    at(task, timezone.now() - timedelta(minutes=3, seconds=5))
    page = admin_client.get(DEPLOYS_URL).content.decode()
    task.refresh_from_db()
    assert f'title="{format_time(task.created_at)}">3 min ago</time>' in page
    assert format_time(task.created_at).endswith(" UTC")

    settings.TIME_ZONE = "Europe/Paris"
    page = admin_client.get(DEPLOYS_URL).content.decode()
    assert f'title="{format_time(task.created_at)}">3 min ago</time>' in page
    assert format_time(task.created_at).endswith((" CET", " CEST"))


def test_a_task_page_shows_its_times_and_timeline_in_the_one_format(admin_client, settings):
    task = FinishedDeploymentFactory()
    at(task, WINTER)
    TaskEvent.objects.filter(task=task).update(created_at=WINTER)
    url = f"{DEPLOYS_URL}{task.pk}/change/"

    page = admin_client.get(url).content.decode()
    times = page[page.index(">Times</h2>") :]
    times = times[: times.index("</fieldset>")]
    assert times.count("2026-11-29 11:46:23 UTC") == 3  # created, started, finished
    assert "a.m." not in page and "11:46:23.345" not in page
    timeline = page[page.index(">Timeline</h2>") :]
    timeline = timeline[: timeline.index("</fieldset>")]
    assert "2026-11-29 11:46:23 UTC" in timeline

    settings.TIME_ZONE = "Europe/Paris"
    page = admin_client.get(url).content.decode()
    assert page.count("2026-11-29 12:46:23 CET") >= 4 and "11:46:23" not in page


def test_djangos_change_lists_and_history_pages_use_the_one_format(admin_client, admin_user, settings):
    settings.TIME_ZONE = "Europe/Paris"
    token, _ = AuthToken.objects.create(user=admin_user, expiry=timedelta(days=1))
    AuthToken.objects.filter(pk=token.pk).update(created=WINTER)
    page = admin_client.get("/admin/knox/authtoken/").content.decode()
    assert "2026-11-29 12:46:23 CET" in page  # a column Django formats itself

    model = EmbeddingModelFactory(id="clocked")
    LogEntry.objects.create(
        user=admin_user,
        content_type=ContentType.objects.get_for_model(EmbeddingModel),
        object_id=model.pk,
        object_repr=str(model),
        action_flag=ADDITION,
        action_time=SUMMER,
    )
    page = admin_client.get(f"/admin/deployments/embeddingmodel/{model.pk}/history/").content.decode()
    assert "2026-07-01 11:05:07 CEST" in page


def test_the_dashboard_shows_how_long_ago_with_the_time_as_its_tooltip(admin_client, settings):
    settings.TIME_ZONE = "Europe/Paris"
    failed = FailedDeploymentFactory()
    at(failed, timezone.now() - timedelta(hours=2, minutes=1))
    failed.refresh_from_db()
    page = admin_client.get("/admin/").content.decode()
    assert f'title="{format_time(failed.created_at)}">2 h ago</time>' in page
    assert " ago" in page and " ago ago" not in page
