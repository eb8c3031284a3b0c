import os

import pytest
from huggingface_hub import scan_cache_dir

from deployments.inference import SourceRefused, open_source
from deployments.inference.sources import RESERVED_FILE_NAMES
from tests.support.sources import COMMIT, lay_out_hf_cache


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


# -- hf://: the local Hugging Face cache ---------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, roots, monkeypatch):
    _, model, _ = roots
    cache = tmp_path / "hf-cache"
    lay_out_hf_cache(cache, "acme/embedder", model)
    monkeypatch.setattr("deployments.inference.sources.hf_constants.HF_HUB_CACHE", str(cache))
    return cache


def test_an_hf_uri_resolves_offline_to_the_snapshot_of_its_commit(hf_cache):
    source = open_source("hf://acme/embedder@main", [])
    assert source.resolved == {"repo": "acme/embedder", "revision": "main", "commit": COMMIT}
    assert relpaths(source) == ["config.json", "sub/weights.bin"]
    # The cache huggingface_hub itself reads back: the layout is the real one.
    (repo,) = scan_cache_dir(hf_cache).repos
    assert repo.repo_id == "acme/embedder" and {rev.commit_hash for rev in repo.revisions} == {COMMIT}


def test_a_commit_or_no_revision_resolves_too(hf_cache):
    assert open_source(f"hf://acme/embedder@{COMMIT}", []).resolved["commit"] == COMMIT
    assert open_source("hf://acme/embedder", []).resolved["revision"] == "main"


def test_the_commit_recorded_stays_when_the_branch_moves(hf_cache, roots):
    _, model, _ = roots
    first = open_source("hf://acme/embedder@main", [])
    (model / "config.json").write_text('{"v": 2}')
    lay_out_hf_cache(hf_cache, "acme/embedder", model, commit="f" * 40)
    assert open_source("hf://acme/embedder@main", []).resolved["commit"] == "f" * 40
    assert first.resolved["commit"] == COMMIT


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("hf://acme/unknown@main", "not in the local Hugging Face cache"),
        ("hf://acme/embedder@no-such-branch", "not in the local Hugging Face cache"),
        ("hf://acme/../etc@main", "must look like"),
        ("hf://acme/embedder@..", "may not be '.' or '..'"),
        ("hf://acme/embedder@.", "may not be '.' or '..'"),
        ("hf://", "must look like"),
    ],
)
def test_what_the_cache_does_not_hold_is_refused_without_a_download(hf_cache, uri, reason):
    with pytest.raises(SourceRefused, match=reason):
        open_source(uri, [])


def test_a_snapshot_link_that_leaves_the_cache_is_refused(hf_cache, roots):
    _, _, outside = roots
    snapshot = hf_cache / "models--acme--embedder" / "snapshots" / COMMIT
    (snapshot / "stolen.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(SourceRefused, match="outside the allowed roots"):
        relpaths(open_source("hf://acme/embedder@main", []))
