"""API tokens: django-rest-knox's hashed, expiring tokens behind the header scripts already send,
``Authorization: Token <key>``."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.models import AuthToken


def is_expired(token: AuthToken) -> bool:
    return token.expiry is not None and token.expiry <= timezone.now()


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's authentication, reading nothing but the presented token (with its user) in one query.

    knox also deletes the user's other expired tokens on every request, one more query and a write on
    every read; here an expired token is only refused (401, "Invalid token."), and stays listed in the
    admin, marked expired, until an operator deletes it or ``create_token`` replaces it.
    """

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        return is_expired(auth_token)


class TokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme: the same ``tokenAuth`` the schema named before the tokens were hashed."""

    target_class = TokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token")
