"""The artifact checks on real files: copies of the packaged MiniLM, damaged the ways copies get damaged."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from deployments.inference import InvalidArtifacts, SourceRefused, artifact_problems, open_source
from deployments.inference.integrity import loaded_weight_bytes
from deployments.inference.sources import checked_source
from tests.support.artifacts import copy_packaged_model, small_model_folder, truncate
from tests.support.sources import lay_out_hf_cache

MINILM_WEIGHTS_BYTES = 90_868_376


@pytest.fixture
def minilm_copy(tmp_path: Path) -> Path:
    return copy_packaged_model(tmp_path / "sources" / "minilm")


def problems_of(folder: Path) -> list[str]:
    return artifact_problems(str(folder), open_source(str(folder), [folder.parent]).files())


def test_the_packaged_model_is_whole(minilm_dir: Path):
    assert problems_of(minilm_dir) == []
    assert checked_source(str(minilm_dir), [minilm_dir.parent]).uri == minilm_dir.as_uri()


def test_a_truncated_safetensors_file_is_named_with_its_source_and_both_sizes(minilm_copy: Path):
    weights = minilm_copy / "model.safetensors"
    assert weights.stat().st_size == MINILM_WEIGHTS_BYTES
    truncate(weights, 751_485)  # the operator's copy, as it was found
    [problem] = problems_of(minilm_copy)
    assert problem.startswith(f"model.safetensors in {minilm_copy} is truncated: ")
    # What the header promises after itself against what the file has: 90,856,960 vs 740,069.
    assert "90,856,960 bytes of tensors" in problem and "the file has 740,069" in problem
    assert "751,485 bytes in all" in problem and "copy it again" in problem


@pytest.mark.parametrize(
    ("keep_bytes", "said"),
    [(5, "not even the 8-byte header length"), (500, "its header length says")],
    ids=["inside-the-length", "inside-the-header"],
)
def test_a_safetensors_file_cut_before_its_tensors_is_truncated(minilm_copy: Path, keep_bytes: int, said: str):
    truncate(minilm_copy / "model.safetensors", keep_bytes)
    [problem] = problems_of(minilm_copy)
    assert problem.startswith(f"model.safetensors in {minilm_copy} is truncated: ") and said in problem


def test_bytes_that_are_not_safetensors_are_named_so(minilm_copy: Path):
    (minilm_copy / "model.safetensors").write_bytes(b"\x00" * 1024)  # length 0: an empty header
    [problem] = problems_of(minilm_copy)
    assert "model.safetensors" in problem and "its header is not JSON" in problem

    (minilm_copy / "model.safetensors").write_bytes(b"<html>404 Not Found</html>")  # a download gone wrong
    [problem] = problems_of(minilm_copy)
    assert "is not a safetensors file: its first 8 bytes give a header length of" in problem


def test_bytes_after_the_last_tensor_are_named(minilm_copy: Path):
    with open(minilm_copy / "model.safetensors", "ab") as handle:
        handle.write(b"\x00" * 100)
    [problem] = problems_of(minilm_copy)
    assert "100 bytes follow its last tensor" in problem and f"{MINILM_WEIGHTS_BYTES + 100:,}" in problem


def test_a_header_whose_offsets_disagree_with_the_dtype_is_damaged(tmp_path: Path):
    folder = small_model_folder(tmp_path / "sources" / "small")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["embeddings.weight"]["shape"] = [4, 100]  # 1,600 bytes of F32, where it spans 6,144
    new_header = json.dumps(header).encode()
    weights.write_bytes(len(new_header).to_bytes(8, "little") + new_header + data[8 + length :])
    [problem] = problems_of(folder)
    assert "tensor 'embeddings.weight' is F32 [4, 100] (1,600 bytes) but spans 6,144" in problem


def test_a_truncated_pytorch_archive_is_named(tmp_path: Path):
    folder = small_model_folder(tmp_path / "sources" / "bin")
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    with zipfile.ZipFile(weights, "w") as archive:  # the container torch.save writes
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", bytes(range(256)) * 64)
    assert problems_of(folder) == []
    truncate(weights, weights.stat().st_size // 2)
    [problem] = problems_of(folder)
    assert problem.startswith(f"pytorch_model.bin in {folder} is truncated or damaged: a torch.save archive")


@pytest.mark.parametrize("name", ["tokenizer_config.json", "config.json", "modules.json", "1_Pooling/config.json"])
def test_a_json_file_that_does_not_parse_is_named(minilm_copy: Path, name: str):
    path = minilm_copy / name
    truncate(path, path.stat().st_size // 2)
    problems = problems_of(minilm_copy)
    assert problems[0].startswith(f"{name} in {minilm_copy} is not valid JSON (")
    assert "copy it again or fix it" in problems[0]


def test_any_json_file_present_must_parse(minilm_copy: Path):
    (minilm_copy / "data_config.json").write_bytes(b"\xff\xfe not text")
    [problem] = problems_of(minilm_copy)
    assert problem.startswith(f"data_config.json in {minilm_copy} is not UTF-8 text")


def test_a_module_folder_named_in_modules_json_must_be_there(minilm_copy: Path):
    shutil.rmtree(minilm_copy / "1_Pooling")
    [problem] = problems_of(minilm_copy)
    assert problem == (
        f"modules.json in {minilm_copy} names the module folder 1_Pooling/ (Pooling), which is missing or empty "
        "(copy the whole model folder)"
    )
    # 2_Normalize is named too and has no folder: a Normalize module saves no files, and that is fine.
    assert not (minilm_copy / "2_Normalize").exists()


@pytest.mark.parametrize("modules", ["[]", "{}", "null"])
def test_a_modules_json_that_names_no_module_is_named(minilm_copy: Path, modules: str):
    (minilm_copy / "modules.json").write_text(modules)
    assert problems_of(minilm_copy) == [f"modules.json in {minilm_copy} names no modules (copy it again or fix it)"]


def test_weights_and_a_tokenizer_must_be_there(minilm_copy: Path):
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt"):
        (minilm_copy / name).unlink()
    assert problems_of(minilm_copy) == [
        f"{minilm_copy} has no weights file (model.safetensors or pytorch_model.bin)",
        f"{minilm_copy} has no tokenizer (one of tokenizer.json, vocab.txt, vocab.json, sentencepiece.bpe.model, "
        "spiece.model, tokenizer.model)",
    ]


def test_the_weights_and_tokenizer_are_looked_for_in_the_transformer_module_folder(tmp_path: Path):
    folder = small_model_folder(tmp_path / "sources" / "nested")
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"  # how older sentence-transformers saved it
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "0_Transformer").mkdir()
    for name in ("model.safetensors", "config.json"):
        (folder / name).rename(folder / "0_Transformer" / name)
    [problem] = problems_of(folder)
    assert problem.startswith(f"{folder} has no tokenizer in 0_Transformer/ (one of tokenizer.json, ")
    (folder / "tokenizer.json").rename(folder / "0_Transformer" / "tokenizer.json")
    assert problems_of(folder) == []


def test_a_folder_that_is_no_model_says_so(tmp_path: Path):
    folder = tmp_path / "sources" / "notes"
    folder.mkdir(parents=True)
    (folder / "readme.txt").write_text("not a model")
    assert problems_of(folder) == [f"{folder} has neither modules.json nor config.json: it is not a model folder"]


def test_every_problem_is_named_at_once_and_raised_as_a_refused_source(minilm_copy: Path):
    truncate(minilm_copy / "model.safetensors", 751_485)
    (minilm_copy / "tokenizer.json").write_text('{"truncated": ')
    shutil.rmtree(minilm_copy / "1_Pooling")
    with pytest.raises(InvalidArtifacts) as damaged:
        checked_source(str(minilm_copy), [minilm_copy.parent])
    assert isinstance(damaged.value, SourceRefused)  # every door that refuses a source refuses this one
    assert [problem.split(" ")[0] for problem in damaged.value.problems] == [
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
    ]
    assert str(damaged.value) == "; ".join(damaged.value.problems)


def test_a_hugging_face_source_is_named_by_its_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = small_model_folder(tmp_path / "files")
    truncate(folder / "model.safetensors", 100)
    cache = tmp_path / "hf-cache"
    lay_out_hf_cache(cache, "acme/small", folder)
    monkeypatch.setattr("deployments.inference.sources.hf_constants.HF_HUB_CACHE", str(cache))
    uri = "hf://acme/small@main"
    [problem] = artifact_problems(uri, open_source(uri, []).files())
    assert problem.startswith(f"model.safetensors in {uri} is truncated: ")


def test_the_memory_estimate_reads_the_tensors_from_the_headers_widened_to_float32(
    minilm_dir, tiny_model_dir, tmp_path
):
    # MiniLM's tensors are float32: exactly the bytes its header gives them.
    assert loaded_weight_bytes([minilm_dir / "model.safetensors"]) == 90_856_960
    # The tiny model's are stored as float16 and computed in float32: twice their bytes on disk.
    weights = tiny_model_dir / "model.safetensors"
    header_length = int.from_bytes(weights.read_bytes()[:8], "little")
    assert loaded_weight_bytes([weights]) == 2 * (weights.stat().st_size - 8 - header_length)
    # A torch.save archive counts at its size; other files not at all.
    archive = tmp_path / "pytorch_model.bin"
    archive.write_bytes(b"x" * 1000)
    assert loaded_weight_bytes([archive, tiny_model_dir / "config.json"]) == 1000
