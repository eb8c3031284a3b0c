import json
import os
import shutil
import stat
import time

import pytest

from deployments.inference import (
    ChecksumMismatch,
    InvalidArtifacts,
    InvalidModelId,
    ModelRepository,
    SourceRefused,
    open_source,
)
from deployments.inference.repository import MANIFEST_NAME, STALE_INCOMING_SECONDS
from tests.support.artifacts import small_model_folder, truncate


@pytest.fixture
def source_dir(tmp_path):
    return small_model_folder(tmp_path / "sources" / "model")


@pytest.fixture
def repo(tmp_path):
    return ModelRepository(tmp_path / "repository", keep_revisions=2)


def source(path):
    return open_source(str(path), [path.parent])


def test_a_revision_is_a_verified_read_only_copy(repo, source_dir):
    revision = repo.create_revision("m1", source(source_dir))
    assert revision.path.parent == repo.revisions_dir("m1")
    weights = "model.safetensors"
    assert (revision.path / weights).read_bytes() == (source_dir / weights).read_bytes()
    manifest = (revision.path / MANIFEST_NAME).read_text().splitlines()
    assert [line.split("  ")[1] for line in manifest] == [
        "1_Pooling/config.json",
        "config.json",
        weights,
        "modules.json",
        "tokenizer.json",
    ]
    mode = (revision.path / weights).stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    repo.verify(revision.path)


def test_the_same_artifacts_converge_on_one_revision(repo, source_dir):
    first = repo.create_revision("m1", source(source_dir))
    second = repo.create_revision("m1", source(source_dir))
    assert first.revision == second.revision
    assert repo.list_revisions("m1") == [first.revision]
    assert not list(repo.model_dir("m1").glob(".incoming-*"))


def test_changed_artifacts_make_a_new_revision(repo, source_dir):
    first = repo.create_revision("m1", source(source_dir))
    (source_dir / "README.md").write_text("v2")
    second = repo.create_revision("m1", source(source_dir))
    assert first.revision != second.revision
    assert set(repo.list_revisions("m1")) == {first.revision, second.revision}


def test_a_tampered_revision_fails_verification_and_is_replaced(repo, source_dir):
    revision = repo.create_revision("m1", source(source_dir))
    weights = revision.path / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"corrupt")
    with pytest.raises(ChecksumMismatch, match=r"model\.safetensors"):
        repo.verify(revision.path)
    again = repo.create_revision("m1", source(source_dir))
    assert again.revision == revision.revision
    repo.verify(again.path)


def test_a_missing_file_fails_verification(repo, source_dir):
    revision = repo.create_revision("m1", source(source_dir))
    (revision.path / "config.json").unlink()
    with pytest.raises(ChecksumMismatch, match=r"missing config\.json"):
        repo.verify(revision.path)


def test_a_crashed_copy_leaves_nothing_under_revisions(repo, source_dir):
    leftover = repo.model_dir("m1") / ".incoming-crashed"
    leftover.mkdir(parents=True)
    (leftover / "half.bin").write_bytes(b"half")
    an_hour_ago = time.time() - STALE_INCOMING_SECONDS - 1
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    repo.create_revision("m1", source(source_dir))
    assert not leftover.exists()


def test_a_copy_another_attempt_is_making_is_left_alone(repo, source_dir):
    in_progress = repo.model_dir("m1") / ".incoming-other-attempt"
    in_progress.mkdir(parents=True)
    repo.create_revision("m1", source(source_dir))
    assert in_progress.exists()


def test_an_empty_source_is_refused(repo, tmp_path):
    empty = tmp_path / "sources" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(SourceRefused, match="no files"):
        repo.create_revision("m1", source(empty))
    assert repo.list_revisions("m1") == []


def test_a_copy_with_damaged_artifacts_names_its_source_file_and_is_left_nowhere(repo, source_dir):
    truncate(source_dir / "model.safetensors", 100)
    with pytest.raises(InvalidArtifacts) as damaged:
        repo.create_revision("m1", source(source_dir))
    # Named by the source the operator gave, not by the repository's copy.
    assert damaged.value.problems[0].startswith(f"model.safetensors in {source_dir} is truncated")
    assert str(repo.root) not in str(damaged.value)
    assert repo.list_revisions("m1") == []
    assert not list(repo.model_dir("m1").glob(".incoming-*"))


def test_each_revision_is_loadable_under_its_own_name(repo, source_dir):
    first = repo.create_revision("m1", source(source_dir))
    (source_dir / "README.md").write_text("second")
    second = repo.create_revision("m1", source(source_dir))
    settings = json.loads(repo.write_settings("m1", first.revision).read_text())
    repo.write_settings("m1", second.revision)
    assert settings["name"] == f"m1~{first.revision}"
    assert settings["parameters"]["uri"] == str(first.path)
    assert settings["parameters"]["extra"] == {"model_id": "m1", "revision": first.revision}
    assert "version" not in settings["parameters"]
    assert repo.loadable_revisions("m1") == sorted([first.revision, second.revision])
    # Atomic writes leave no temporary files for the server's glob to trip over.
    assert not [p for p in repo.model_dir("m1").rglob(".tmp-*")]
    assert repo.remove_settings("m1", first.revision) is True
    assert repo.remove_settings("m1", first.revision) is False
    assert repo.loadable_revisions("m1") == [second.revision]
    assert repo.model_ids() == ["m1"]


def test_the_live_pointer_names_one_revision_or_none(repo, source_dir):
    revision = repo.create_revision("m1", source(source_dir))
    assert repo.live_revision("m1") is None
    repo.set_live("m1", revision.revision)
    assert repo.live_revision("m1") == revision.revision
    (repo.model_dir("m1") / "live.json").write_text("{ torn")
    assert repo.live_revision("m1") is None, "an unreadable pointer is no revision, not a crash"
    repo.set_live("m1", None)
    assert repo.live_revision("m1") is None


def test_prune_keeps_the_newest_and_the_protected(repo, source_dir):
    made = []
    for n in range(4):
        (source_dir / "README.md").write_text(f"v{n}")
        revision = repo.create_revision("m1", source(source_dir))
        os.utime(revision.path, (1000 + n, 1000 + n))
        made.append(revision.revision)
    removed = repo.prune("m1", protect={made[0]})
    assert set(removed) == {made[1]}
    assert set(repo.list_revisions("m1")) == {made[3], made[2], made[0]}


def test_remove_model_deletes_everything_of_that_model_only(repo, source_dir):
    kept = repo.create_revision("other", source(source_dir))
    revision = repo.create_revision("m1", source(source_dir))
    repo.write_settings("m1", revision.revision)
    repo.set_live("m1", revision.revision)
    assert repo.remove_model("m1") == [revision.revision]
    assert not repo.model_dir("m1").exists()
    repo.verify(kept.path)
    assert repo.remove_model("m1") == []


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "", "x" * 200])
def test_unsafe_ids_never_become_paths(repo, bad_id):
    with pytest.raises(InvalidModelId):
        repo.model_dir(bad_id)


def test_a_copy_that_differs_from_its_source_is_refused_and_left_nowhere(repo, source_dir, monkeypatch):
    # Fault injection: a disk that corrupts what it writes cannot be had on demand.
    real_copyfile = shutil.copyfile

    def corrupting_copyfile(src, dst, **kwargs):
        real_copyfile(src, dst, **kwargs)
        with open(dst, "r+b") as handle:
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0xFF]))

    monkeypatch.setattr("deployments.inference.repository.shutil.copyfile", corrupting_copyfile)
    with pytest.raises(ChecksumMismatch, match="differs from its source"):
        repo.create_revision("m1", source(source_dir))
    assert repo.list_revisions("m1") == []
    assert not list(repo.model_dir("m1").glob(".incoming-*"))
