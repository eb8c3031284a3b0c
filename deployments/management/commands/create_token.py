"""``manage.py create_token USER [--expires-days N]``: a new API token for USER, printed once.

Only its SHA-512 digest is stored (django-rest-knox), so the key cannot be shown again: stdout holds
the key alone (``T=$(manage.py create_token admin)``), the expiry goes to stderr. The user's expired
tokens are deleted on the way; a token is revoked by deleting it in the admin (Auth tokens).
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings

from deployments.clock import format_time
from deployments.management.commands._operators import bad_arguments


class Command(BaseCommand):
    help = "Create an API token (Authorization: Token <key>) for a user and print it; it is not stored in clear."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--expires-days",
            type=float,
            help="the token is refused after this many days (default: API_TOKEN_TTL_DAYS, else never)",
        )

    def handle(self, *args: object, username: str, expires_days: float | None, **options: object) -> None:
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise bad_arguments(f"no user named {username!r}")
        if not user.is_active:
            raise bad_arguments(f"user {username!r} is inactive: a token of theirs would be refused")
        if expires_days is not None and not 0 < expires_days < 365_000:
            raise bad_arguments(f"--expires-days: {expires_days:g} is not a number of days above 0")
        ttl = timedelta(days=expires_days) if expires_days is not None else knox_settings.TOKEN_TTL
        with transaction.atomic():
            AuthToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()
            token, key = AuthToken.objects.create(user=user, expiry=ttl)
        self.stdout.write(key)
        expiry = f"expires {format_time(token.expiry)}" if token.expiry else "never expires"
        self.stderr.write(
            f"token {key[:8]}… for {username}: {expiry}; keep it now, it cannot be shown again", style_func=str
        )
