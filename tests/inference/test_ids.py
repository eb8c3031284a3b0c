import re

import pytest

from deployments.inference import MODEL_ID_PATTERN, InvalidModelId, validate_model_id
from deployments.inference.ids import served_name, validate_revision


@pytest.mark.parametrize("model_id", ["minilm", "all-MiniLM-L6-v2", "a", "model_1.2", "9lives", "x" * 128])
def test_safe_ids_are_accepted(model_id):
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize(
    ("model_id", "complaint"),
    [
        ("", "empty"),
        ("x" * 129, "at most 128"),
        ("a/b", "only letters"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("../etc", "'..'"),
        (".hidden", "start with"),
        ("-flag", "start with"),
        ("with space", "only letters"),
        ("tab\there", "only letters"),
        ("nul\x00byte", "only letters"),
        ("new\nline", "only letters"),
        ("tilde~green", "only letters"),
        ("ünïcode", "only letters"),
        ("back\\slash", "only letters"),
        ("settings.json", "repository's own settings file"),  # the replicas' settings, beside the model folders
    ],
)
def test_unsafe_ids_are_refused_with_a_reason(model_id, complaint):
    with pytest.raises(InvalidModelId, match=complaint):
        validate_model_id(model_id)


@pytest.mark.parametrize(
    "model_id",
    [
        *["minilm", "a", "model_1.2", "a.", "a.-b", "a._b", "x" * 128, "", "a..b", ".a", "-a", "a b", "a/b", "a~b"],
        *["é", "settings.json", "settings.json2", "my-settings.json"],
    ],
)
def test_the_documented_pattern_is_the_rule(model_id):
    """Clients generated from the OpenAPI schema check ids with MODEL_ID_PATTERN (and maxLength 128)."""
    try:
        validate_model_id(model_id)
        valid = True
    except InvalidModelId:
        valid = False
    assert valid == (len(model_id) <= 128 and re.fullmatch(MODEL_ID_PATTERN, model_id) is not None)


def test_non_string_ids_are_refused():
    with pytest.raises(InvalidModelId, match="string"):
        validate_model_id(42)


def test_a_served_name_cannot_collide_with_any_valid_id():
    name = served_name("minilm", "0123456789abcdef")
    assert name == "minilm~0123456789abcdef"
    with pytest.raises(InvalidModelId):
        validate_model_id(name)


@pytest.mark.parametrize("revision", ["0123456789abcdef", "ffffffffffffffff"])
def test_revision_ids_are_16_hex_digits(revision):
    assert validate_revision(revision) == revision


@pytest.mark.parametrize("revision", ["", "0123456789ABCDEF", "../../etc/passwd", "0123", None, "0123456789abcdefa"])
def test_anything_else_is_not_a_revision(revision):
    with pytest.raises(InvalidModelId, match="revision"):
        validate_revision(revision)
