import os

import pytest

from deployments.inference import SourceRefused, open_source
from deployments.inference.sources import RESERVED_FILE_NAMES


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    model = allowed / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not copy")
    return allowed, model, outside


def relpaths(source):
    return sorted(rel for _, rel in source.files())


def test_a_directory_inside_an_allowed_root_lists_its_files(roots):
    allowed, model, _ = roots
    assert relpaths(open_source(str(model), [allowed])) == ["config.json", "sub/weights.bin"]


def test_file_uri_is_the_same_source(roots):
    allowed, model, _ = roots
    assert relpaths(open_source(model.as_uri(), [allowed])) == ["config.json", "sub/weights.bin"]


def test_a_directory_outside_the_roots_is_refused(roots):
    allowed, _, outside = roots
    with pytest.raises(SourceRefused, match="outside the allowed roots"):
        open_source(str(outside), [allowed])


def test_dot_dot_cannot_climb_out_of_a_root(roots):
    allowed, _, outside = roots
    sneaky = f"{allowed}/model/../../{outside.name}"
    with pytest.raises(SourceRefused, match="outside the allowed roots"):
        open_source(sneaky, [allowed])


def test_a_symlinked_source_that_escapes_is_refused(roots):
    allowed, _, outside = roots
    link = allowed / "link"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(SourceRefused, match="outside the allowed roots"):
        open_source(str(link), [allowed])


def test_a_symlinked_file_that_escapes_is_refused_while_listing(roots):
    allowed, model, outside = roots
    (model / "stolen.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(SourceRefused, match="outside the allowed roots"):
        relpaths(open_source(str(model), [allowed]))


def test_a_symlinked_file_inside_the_roots_is_copied_as_a_file(roots):
    allowed, model, _ = roots
    (model / "alias.json").symlink_to(model / "config.json")
    assert "alias.json" in relpaths(open_source(str(model), [allowed]))


def test_a_symlinked_directory_is_refused(roots):
    allowed, model, _ = roots
    (model / "linked").symlink_to(model / "sub", target_is_directory=True)
    with pytest.raises(SourceRefused, match="symlinked directory"):
        relpaths(open_source(str(model), [allowed]))


def test_server_configuration_files_are_never_copied(roots):
    allowed, model, _ = roots
    for name in RESERVED_FILE_NAMES:
        (model / name).write_text('{"name": "hijack"}')
    assert relpaths(open_source(str(model), [allowed])) == ["config.json", "sub/weights.bin"]


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("", "non-empty"),
        ("relative/path", "absolute"),
        ("s3://bucket/model", "not supported"),
        ("file://otherhost/model", "remote host"),
        ("/no/such/dir", "does not exist"),
        ("/tmp/nul\x00byte", "NUL"),
    ],
)
def test_malformed_sources_are_refused_with_a_reason(roots, uri, complaint):
    allowed, _, _ = roots
    with pytest.raises(SourceRefused, match=complaint):
        open_source(uri, [allowed])


def test_no_allowed_roots_means_nothing_is_allowed(roots):
    _, model, _ = roots
    with pytest.raises(SourceRefused, match="no source roots"):
        open_source(str(model), [])


def test_a_file_is_not_a_model_directory(roots):
    allowed, model, _ = roots
    with pytest.raises(SourceRefused, match="not a directory"):
        open_source(os.fspath(model / "config.json"), [allowed])
