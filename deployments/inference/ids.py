"""Model ids become server names and directory names, so they are checked before either."""

import re

from .errors import InvalidModelId

MAX_MODEL_ID_LENGTH = 128
# Letters, digits and . _ - only: safe in a URL path segment and a file name on every platform.
# '~' is deliberately excluded so that a served name "<id>~<revision>" can never collide with an id.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The servers' shared settings file lies beside the model folders in the repository's root: no model's folder.
RESERVED_MODEL_IDS = frozenset({"settings.json"})
# The same rule as one anchored pattern for OpenAPI's `pattern`: dots only single, between the other characters.
MODEL_ID_PATTERN = (
    "^"
    + "".join(f"(?!{re.escape(name)}$)" for name in sorted(RESERVED_MODEL_IDS))
    + r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.?$"
)
REVISION_SEPARATOR = "~"
# The header the router adds to a call it rewrote from a model's stable URL: the name the client called,
# which the runtime answers as the response's ``model_name`` (the protocol's "model that was called").
CALLED_NAME_HEADER = "x-inference-called-model"
# A revision id: the first 16 hex digits of its manifest's digest.
REVISION_PATTERN = r"^[0-9a-f]{16}$"
_REVISION = re.compile(REVISION_PATTERN)


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
    if model_id in RESERVED_MODEL_IDS:
        raise InvalidModelId(f"model id {model_id!r} is the name of the model repository's own settings file")
    return model_id


def validate_revision(revision: object) -> str:
    """Return ``revision`` if it has the form of a revision id (16 hex digits), else raise InvalidModelId."""
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise InvalidModelId(f"revision must be 16 lowercase hex digits, got {revision!r}")
    return revision


def served_name(model_id: str, revision: str) -> str:
    """The name one revision of a model is loaded under on every replica: ``<model_id>~<revision>``.

    Each revision has its own name, so loading the next one never touches the one serving traffic;
    the router decides which name a model's stable URL reaches.
    """
    return f"{validate_model_id(model_id)}{REVISION_SEPARATOR}{revision}"
