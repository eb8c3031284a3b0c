import pytest

from deployments.inference import InvalidModelId, staging_name, validate_model_id


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
    ],
)
def test_unsafe_ids_are_refused_with_a_reason(model_id, complaint):
    with pytest.raises(InvalidModelId, match=complaint):
        validate_model_id(model_id)


def test_non_string_ids_are_refused():
    with pytest.raises(InvalidModelId, match="string"):
        validate_model_id(42)


def test_staging_name_cannot_collide_with_any_valid_id():
    name = staging_name("minilm")
    assert name != "minilm"
    with pytest.raises(InvalidModelId):
        validate_model_id(name)
