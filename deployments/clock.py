"""How a time is shown to an operator, everywhere: the admin, the dashboard and the commands.

One format, ``2026-11-29 11:46:23 UTC``: seconds (no microseconds), in the display zone
(settings.TIME_ZONE, from the environment), labelled with the zone's abbreviation (``CET``,
``CEST``) or its offset where the zone has none. Django's own admin dates use the same format
through controlplane/formats/en/formats.py (DATETIME_FORMAT), kept equal by a test.

Where operators scan (task lists, the dashboard) a relative time ("3 min ago") is shown, with the
absolute time as its tooltip.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
NO_TIME = "—"


def format_time(moment: datetime | None) -> str:
    """``2026-11-29 11:46:23 UTC``: the moment in the display zone, to the second, with the zone's name."""
    if moment is None:
        return NO_TIME
    local = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    return f"{local.strftime(TIME_FORMAT)} {local.tzname() or local.strftime('%z')}".rstrip()


def relative_time(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago`` or ``in 2 min``: the largest whole unit between ``moment`` and now."""
    if moment is None:
        return NO_TIME
    seconds = ((now or timezone.now()) - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    amount = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if amount >= size:
            text = f"{int(amount // size)} {unit}"
            break
    else:
        text = f"{int(amount)} s"
    return f"{text} ago" if seconds > 0 else f"in {text}"
