"""API tokens: django-rest-knox's hashed, expiring tokens behind the header scripts already send,
``Authorization: Token <key>``, or ``Authorization: Bearer <key>`` as most HTTP clients send it."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header
from rest_framework.request import Request

# The words an Authorization header may start with; the challenge (WWW-Authenticate) names the first.
TOKEN_PREFIXES = ("Token", "Bearer")


def is_expired(token: AuthToken) -> bool:
    return token.expiry is not None and token.expiry <= timezone.now()


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's authentication, reading nothing but the presented token (with its user) in one query.

    knox also deletes the user's other expired tokens on every request, one more query and a write on
    every read; here an expired token is only refused (401, "Invalid token."), and stays listed in the
    admin, marked expired, until an operator deletes it or ``create_token`` replaces it.

    knox takes one prefix (``Token``); ``Bearer`` is taken beside it, the same key either way.
    """

    def authenticate(self, request: Request) -> tuple[object, AuthToken] | None:
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in {prefix.lower().encode() for prefix in TOKEN_PREFIXES}:
            return None  # no header, or one for another scheme (a session, Basic ...)
        if len(auth) == 1:
            raise exceptions.AuthenticationFailed("Invalid token header. No credentials provided.")
        if len(auth) > 2:
            raise exceptions.AuthenticationFailed("Invalid token header. Token string should not contain spaces.")
        return self.authenticate_credentials(auth[1])

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        return is_expired(auth_token)


class TokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security schemes: the same ``tokenAuth`` the schema named before the tokens were hashed,
    and ``bearerAuth`` for the same key sent as a bearer token; either one is enough."""

    target_class = TokenAuthentication
    name = ["tokenAuth", "bearerAuth"]

    def get_security_requirement(self, auto_schema: object) -> list[dict[str, list[str]]]:
        return [{name: []} for name in self.name]  # one or the other, not both

    def get_security_definition(self, auto_schema: object) -> list[dict[str, str]]:
        return [
            build_bearer_security_scheme_object(header_name="Authorization", token_prefix=prefix)
            for prefix in TOKEN_PREFIXES
        ]
