"""Django's date formats for English (FORMAT_MODULE_PATH): the admin's lists, read-only fields and
history pages show a time as deployments.clock.format_time does, ``2026-11-29 11:46:23 UTC``.
Django 5 always localizes, so the format lives here rather than in DATETIME_FORMAT."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"
