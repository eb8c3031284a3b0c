"""Model ids become server names and directory names, so they are checked before either."""

import re

from .errors import InvalidModelId

MAX_MODEL_ID_LENGTH = 128
# Letters, digits and . _ - only: safe in a URL path segment and a file name on every platform.
# '~' is deliberately excluded so that staging names (see STAGING_SUFFIX) can never collide with an id.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STAGING_SUFFIX = "~green"
# An attempt's tag in its staging name: letters and digits, so "<id>~green-<tag>" stays a safe name.
_STAGING_TAG = re.compile(r"[A-Za-z0-9]{1,32}")


def validate_model_id(model_id: object) -> str:
    """Return ``model_id`` if it is safe to use as a name and a path segment, else raise InvalidModelId."""
    if not isinstance(model_id, str):
        raise InvalidModelId("model id must be a string")
    if not model_id:
        raise InvalidModelId("model id must not be empty")
    if len(model_id) > MAX_MODEL_ID_LENGTH:
        raise InvalidModelId(f"model id must be at most {MAX_MODEL_ID_LENGTH} characters")
    if ".." in model_id:
        raise InvalidModelId("model id must not contain '..'")
    if not _MODEL_ID.fullmatch(model_id):
        raise InvalidModelId(
            "model id may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        )
    return model_id


def staging_name(model_id: str, tag: str = "") -> str:
    """The server name green is loaded under while it is proven.

    ``tag`` names the attempt (the control plane passes its lease generation), so two attempts on
    the same model never share a green: a superseded attempt's leftovers are its own.
    """
    name = validate_model_id(model_id) + STAGING_SUFFIX
    if not tag:
        return name
    if not _STAGING_TAG.fullmatch(tag):
        raise InvalidModelId(f"staging tag {tag!r} may contain only letters and digits (at most 32)")
    return f"{name}-{tag}"
