"""The repository class our replicas run: the same settings as MLServer's default for our layout, found by
path instead of a scan, in-process beside the default and in a real MLServer."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlserver.errors import ModelNotFound
from mlserver.repository import SchemalessModelRepository

from deployments.inference import ModelRepository, V2Client
from deployments.inference.mlserver_repository import LayoutModelRepository
from deployments.inference.server import LAYOUT_REPOSITORY, LocalMLServer
from tests.support.routing import write_versioned_settings
from tests.support.tiny_models import TINY_DIMENSIONS

REVISIONS = ("0123456789abcdef", "fedcba9876543210", "00000000deadbeef")


def lay_out(root: Path, model_ids: list[str]) -> list[str]:
    """Models as the deployer leaves them: settings per loadable revision, a live pointer, artifacts
    (with no settings of their own) under revisions/; returns the served names."""
    repository = ModelRepository(root)
    names = []
    for model_id in model_ids:
        for revision in REVISIONS:
            artifacts = repository.revision_path(model_id, revision)
            artifacts.mkdir(parents=True)
            (artifacts / "config.json").write_text("{}")
            repository.write_settings(model_id, revision)
            names.append(f"{model_id}~{revision}")
        repository.set_live(model_id, REVISIONS[0])
    (root / "settings.json").write_text('{"load_models_at_startup": false}')  # the replicas' own, not a model's
    return names


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def laid_out(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "repository"
    names = lay_out(root, ["alpha", "beta.v2", "gamma_3"])
    # Settings without a name or a uri: both come from the folder, as MLServer fills them.
    bare = root / "gamma_3" / "gamma_3~abcdefabcdefabcd" / "model-settings.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({"implementation": "deployments.inference.runtime.SentenceTransformerRuntime"}))
    names.append("gamma_3~abcdefabcdefabcd")
    return root, names


def test_lists_and_finds_the_same_settings_as_mlservers_default(laid_out):
    root, names = laid_out
    ours, default = LayoutModelRepository(str(root)), SchemalessModelRepository(str(root))

    listed = sorted(run(ours.list()), key=lambda settings: settings.name)
    assert listed == sorted(run(default.list()), key=lambda settings: settings.name)
    assert [settings.name for settings in listed] == sorted(names)
    for name in names:
        found, expected = run(ours.find(name)), run(default.find(name))
        assert found == expected and len(found) == 1
        # Private attributes and the fields MLServer fills in, one by one.
        assert found[0]._source == expected[0]._source == str(root / name.split("~")[0] / name / "model-settings.json")
        assert found[0].parameters.uri == expected[0].parameters.uri
        assert found[0].implementation_ == expected[0].implementation_
    bare = run(ours.find("gamma_3~abcdefabcdefabcd"))[0]
    assert bare.name == "gamma_3~abcdefabcdefabcd" and bare.parameters.uri == str(root / "gamma_3" / bare.name)


@pytest.mark.parametrize(
    "name",
    [
        "alpha",  # a model id, not a served name
        "no-such-model",
        "alpha~ffffffffffffffff",  # a revision with no settings
        "nobody~0123456789abcdef",  # a model with no folder
        "revisions~0123456789abcdef",
        "~0123456789abcdef",
        "alpha~",
        "..~x",
        "alpha~0123456789abcdef/../alpha~fedcba9876543210",
    ],
)
def test_a_name_outside_the_layout_is_mlservers_model_not_found(laid_out, name):
    root, _ = laid_out
    for repository in (LayoutModelRepository(str(root)), SchemalessModelRepository(str(root))):
        with pytest.raises(ModelNotFound, match="not found"):
            run(repository.find(name))


def test_settings_that_cannot_be_read_are_not_found_as_with_the_default(laid_out):
    root, _ = laid_out
    (root / "alpha" / "alpha~0123456789abcdef" / "model-settings.json").write_text("{ torn")
    # Settings naming another model than their folder: the default finds them by that name only.
    ModelRepository(root).write_settings("beta.v2", REVISIONS[1])
    elsewhere = root / "beta.v2" / f"beta.v2~{REVISIONS[1]}" / "model-settings.json"
    elsewhere.write_text(json.dumps({**json.loads(elsewhere.read_text()), "name": "renamed"}))
    for repository in (LayoutModelRepository(str(root)), SchemalessModelRepository(str(root))):
        for name in ("alpha~0123456789abcdef", f"beta.v2~{REVISIONS[1]}"):
            with pytest.raises(ModelNotFound):
                run(repository.find(name))
        assert "alpha~0123456789abcdef" not in {settings.name for settings in run(repository.list())}


# -- touching nothing else ------------------------------------------------------------------------

_touched: list[tuple[str, str]] | None = None  # (audit event, path) while a test records them
_hooked = False


def _record(event: str, args: tuple) -> None:
    if _touched is not None and event in {"open", "os.scandir", "os.listdir", "glob.glob"} and args:
        _touched.append((event, str(args[0])))


def files_touched(coroutine) -> tuple[object, list[tuple[str, str]]]:
    """Run ``coroutine``; return its result (or exception) and the files and folders it opened or listed,
    as the interpreter's own audit events report them (every open, every directory listing)."""
    global _touched, _hooked
    if not _hooked:  # an audit hook stays for the life of the process: added once, idle unless recording
        sys.addaudithook(_record)
        _hooked = True
    _touched = []
    try:
        result = run(coroutine)
    except Exception as exc:
        result = exc
    finally:
        touched, _touched = _touched, None
    return result, touched


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One good model among a thousand whose settings are all corrupt."""
    root = tmp_path_factory.mktemp("crowded") / "repository"
    (name,) = [name for name in lay_out(root, ["wanted"]) if name.endswith(REVISIONS[0])]
    for n in range(1000):
        folder = root / f"other-{n:04d}" / f"other-{n:04d}~{REVISIONS[0]}"
        folder.mkdir(parents=True)
        (folder / "model-settings.json").write_text("{ corrupt")
    return root, name


def test_find_reads_the_one_settings_file_it_is_asked_for(crowded):
    root, name = crowded
    found, touched = files_touched(LayoutModelRepository(str(root)).find(name))
    assert [settings.name for settings in found] == [name]
    assert touched == [("open", str(root / "wanted" / name / "model-settings.json"))]

    missing, touched = files_touched(LayoutModelRepository(str(root)).find("other-0001~ffffffffffffffff"))
    assert isinstance(missing, ModelNotFound) and touched == []


def test_the_default_reads_every_settings_file_to_find_one(crowded):
    """What the class above avoids, measured the same way (so the recording is shown to see reads)."""
    root, name = crowded
    found, touched = files_touched(SchemalessModelRepository(str(root)).find(name))
    assert [settings.name for settings in found] == [name]
    opened = {path for event, path in touched if event == "open"}
    assert len(opened) >= 1000 + len(REVISIONS)


def test_listing_walks_two_levels_and_skips_what_it_cannot_read(crowded):
    root, _ = crowded
    listed, touched = files_touched(LayoutModelRepository(str(root)).list())
    assert {settings.name for settings in listed} == {f"wanted~{revision}" for revision in REVISIONS}
    listed_folders = {Path(path) for event, path in touched if event == "os.scandir"}
    assert listed_folders and all(folder == root or folder.parent == root for folder in listed_folders)


# -- in a real MLServer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A replica running MLServer's own repository class: what answered before."""
    base = tmp_path_factory.mktemp("default-replica")
    server = LocalMLServer(base / "repository", base / "server", repository_implementation=None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def load_status(server: LocalMLServer, name: str) -> int:
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=60).status_code


@pytest.mark.mlserver
def test_a_replica_loads_lists_and_serves_a_model_by_its_versioned_name(mlserver, v2_client, tiny_model_dir):
    settings = json.loads((mlserver.repository_root / "settings.json").read_text())
    assert settings["model_repository_implementation"] == LAYOUT_REPOSITORY
    name = write_versioned_settings(mlserver.repository_root, "tiny-layout", REVISIONS[0], tiny_model_dir)
    try:
        v2_client.load(name)
        assert {"name": name, "state": "READY"}.items() <= next(
            entry for entry in v2_client.index() if entry["name"] == name
        ).items()
        answer = v2_client.infer(name, ["hello", "world"])
        assert answer.embeddings.shape == (2, TINY_DIMENSIONS) and np.isfinite(answer.embeddings).all()
        assert answer.parameters["revision"] == REVISIONS[0]
    finally:
        v2_client.unload(name)
        ModelRepository(mlserver.repository_root).remove_model("tiny-layout")


@pytest.mark.mlserver
@pytest.mark.parametrize("name", ["no-such-model", "tiny-layout~ffffffffffffffff", "nobody~0123456789abcdef", "a~"])
def test_an_unknown_name_is_the_same_error_as_with_mlservers_default(mlserver, default_replica, name):
    assert load_status(mlserver, name) == load_status(default_replica, name) == 404


@pytest.mark.mlserver
def test_settings_outside_the_layout_are_not_served(mlserver, default_replica, tiny_model_dir):
    """The proof the replica runs our class: the default would find settings anywhere under the root."""
    with V2Client(default_replica.url) as default_client, V2Client(mlserver.url) as ours:
        for server in (mlserver, default_replica):
            loose = server.repository_root / "loose" / "model-settings.json"
            loose.parent.mkdir()
            loose.write_text(json.dumps({"name": "loose", "implementation": "x.y", "parameters": {"uri": "z"}}))
        try:
            assert "loose" in {entry["name"] for entry in default_client.index()}
            assert "loose" not in {entry["name"] for entry in ours.index()}
            assert load_status(mlserver, "loose") == 404
        finally:
            for server in (mlserver, default_replica):
                ModelRepository(server.repository_root).remove_model("loose")


def test_the_index_parses_only_settings_new_or_replaced_since_it_was_last_read(laid_out, monkeypatch):
    root, names = laid_out
    repository = LayoutModelRepository(str(root))
    first = run(repository.list())
    parsed: list[str] = []
    load = sys.modules[LayoutModelRepository.__module__].load_model_settings
    monkeypatch.setattr(
        sys.modules[LayoutModelRepository.__module__],
        "load_model_settings",
        lambda path: parsed.append(path) or load(path),
    )

    assert run(repository.list()) == first and parsed == []  # nothing changed: nothing parsed again
    # A revision's settings replaced whole (as the deployer writes them), another removed, one added.
    ModelRepository(root).write_settings("alpha", REVISIONS[1])
    ModelRepository(root).remove_settings("beta.v2", REVISIONS[2])
    added = lay_out(root, ["delta"])
    listed = {settings.name for settings in run(repository.list())}

    assert sorted(parsed) == sorted(
        [str(ModelRepository(root).settings_path("alpha", REVISIONS[1]))]
        + [str(ModelRepository(root).settings_path("delta", revision)) for revision in REVISIONS]
    )
    assert listed == (set(names) - {f"beta.v2~{REVISIONS[2]}"}) | set(added)
    # And what it lists is still what MLServer's default reads from the files, private fields included.
    again = sorted(run(repository.list()), key=lambda settings: settings.name)
    assert again == sorted(run(SchemalessModelRepository(str(root)).list()), key=lambda settings: settings.name)
    assert [settings._source for settings in again] == [
        str(root / name.split("~")[0] / name / "model-settings.json") for name in sorted(listed)
    ]
