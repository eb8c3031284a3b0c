"""Whether a model's artifacts are whole, checked before anything loads them.

A truncated ``model.safetensors`` or a JSON config cut short copies and checksums without complaint
and only fails when a replica loads it, with the loader's words ("invalid header length") about a
path in the repository. Checked here instead, at registration and at fetch, each problem names the
source the operator gave, the file in it and what to do.

What is read: the header of each safetensors file (never its tensors), the directory of each
``*.bin`` zip archive (what ``torch.save`` writes), every ``*.json`` file, and the names of the
files. Nothing is imported from the model's libraries.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from .errors import InvalidArtifacts

# Either one is the Transformer module's weights (a sharded model has the index beside its shards).
WEIGHTS_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# Any one of these is a tokenizer the transformers library can load (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
# sentence-transformers modules that save no files: modules.json may name a folder that does not exist
# (the packaged all-MiniLM-L6-v2 names 2_Normalize and has none).
MODULES_WITHOUT_FILES = frozenset({"Normalize"})
# The safetensors library refuses a longer header; a longer "length" is not a safetensors file at all.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
COPY_AGAIN = "copy it again"
ZIP_MAGIC = b"PK\x03\x04"


def check_artifacts(origin: str, files: Iterable[tuple[Path, str]]) -> None:
    """Raise InvalidArtifacts naming every problem of the artifacts; return when they are whole.

    ``origin`` is the source as the operator gave it (a path, ``file://`` or ``hf://`` URI), ``files``
    a source's (absolute path, path relative to the model root) pairs (``ModelSource.files()``).
    """
    if problems := artifact_problems(origin, files):
        raise InvalidArtifacts(problems)


def artifact_problems(origin: str, files: Iterable[tuple[Path, str]]) -> list[str]:
    """One sentence per problem, e.g. "model.safetensors in /models/x is truncated: ..."; empty when whole."""
    where = _display(origin)
    by_relpath = {relpath: path for path, relpath in files}
    problems: list[str] = []
    parsed: dict[str, object] = {}
    for relpath, path in sorted(by_relpath.items()):
        if relpath.endswith(".safetensors"):
            problem = _safetensors_problem(path)
        elif relpath.endswith(".bin"):
            problem = _torch_archive_problem(path)
        elif relpath.endswith(".json"):
            problem, value = _json_problem(path)
            if problem is None:
                parsed[relpath] = value
        else:
            continue
        if problem:
            problems.append(f"{relpath} in {where} {problem}")
    problems.extend(_missing_files(where, set(by_relpath), parsed))
    return problems


def _display(origin: str) -> str:
    """A file URI as the path it names (what the operator knows the folder as); anything else as given."""
    parsed = urlparse(origin)
    return unquote(parsed.path) if parsed.scheme == "file" else origin


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing: 8 bytes of little-endian header length, a JSON
    header, then the tensors' bytes, which the header's data_offsets must exactly cover."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length_bytes = handle.read(8)
        if len(length_bytes) < 8:
            return f"is truncated: {size} bytes, not even the 8-byte header length ({COPY_AGAIN})"
        header_length = int.from_bytes(length_bytes, "little")
        if header_length > SAFETENSORS_MAX_HEADER_BYTES:
            return f"is not a safetensors file: its first 8 bytes give a header length of {header_length:,} bytes"
        if 8 + header_length > size:
            return (
                f"is truncated: its header length says {header_length:,} bytes, "
                f"the file has {size - 8:,} after it ({COPY_AGAIN})"
            )
        header_bytes = handle.read(header_length)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"is not a safetensors file, or is damaged: its header is not JSON ({exc})"
    if not isinstance(header, dict):
        return "is damaged: its header is not a JSON object"
    largest_end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(offset, int) for offset in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return f"is damaged: tensor {name!r} has no valid data_offsets in the header"
        if problem := _tensor_size_problem(name, tensor, offsets[1] - offsets[0]):
            return problem
        largest_end = max(largest_end, offsets[1])
    tensor_bytes = size - 8 - header_length
    if tensor_bytes < largest_end:
        return (
            f"is truncated: its header says {largest_end:,} bytes of tensors, the file has {tensor_bytes:,} "
            f"({size:,} bytes in all; {COPY_AGAIN})"
        )
    if tensor_bytes > largest_end:
        return (
            f"is damaged: {tensor_bytes - largest_end:,} bytes follow its last tensor "
            f"(the header says the file ends at byte {8 + header_length + largest_end:,} of {size:,}; {COPY_AGAIN})"
        )
    return None


# The runtime computes in float32: a tensor stored in a narrower type (float16, bfloat16) is widened at load.
LOADED_MIN_ITEM_BYTES = 4


def loaded_weight_bytes(files: Iterable[Path]) -> int:
    """What a model folder's weights will hold in memory once loaded, read from its files alone.

    A safetensors file: each tensor's elements (from its header, the tensors are not read) times its
    item size, at least float32's; a ``*.bin`` archive: its size (its dtypes are inside the pickle).
    Meant for artifacts that passed ``check_artifacts``.
    """
    total = 0
    for path in files:
        if path.name.endswith(".bin"):
            total += path.stat().st_size
        elif path.name.endswith(".safetensors"):
            with open(path, "rb") as handle:
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            for name, tensor in header.items():
                if name != "__metadata__":
                    item_bytes = max(SAFETENSORS_DTYPE_BYTES[tensor["dtype"]], LOADED_MIN_ITEM_BYTES)
                    total += math.prod(tensor["shape"]) * item_bytes
    return total


def _torch_archive_problem(path: Path) -> str | None:
    """A ``torch.save`` file (``pytorch_model.bin``) is a zip archive whose directory is at its end, so
    a truncated copy has none. Files in the legacy pickle format (or not torch's) are left alone."""
    with open(path, "rb") as handle:
        if handle.read(4) != ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path):  # reads the central directory only, not the tensors
            return None
    except zipfile.BadZipFile as exc:
        return f"is truncated or damaged: a torch.save archive without its directory ({exc}; {COPY_AGAIN})"


def _tensor_size_problem(name: str, tensor: dict, span: int) -> str | None:
    item_bytes = SAFETENSORS_DTYPE_BYTES.get(tensor.get("dtype"))
    shape = tensor.get("shape")
    if item_bytes is None or not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        return None  # a dtype this check does not know: the offsets alone are checked
    needed = item_bytes * math.prod(shape)
    if needed != span:
        return f"is damaged: tensor {name!r} is {tensor['dtype']} {shape} ({needed:,} bytes) but spans {span:,}"
    return None


def _json_problem(path: Path) -> tuple[str | None, object]:
    """(what is wrong, the parsed value): every JSON file a model carries is read by some loader."""
    try:
        return None, json.loads(path.read_bytes())
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text ({exc}; {COPY_AGAIN} or fix it)", None
    except ValueError as exc:
        return f"is not valid JSON ({exc}; {COPY_AGAIN} or fix it)", None


def _missing_files(where: str, relpaths: set[str], parsed: dict[str, object]) -> list[str]:
    """The files a sentence-transformers (or plain transformers) folder needs that are not there;
    ``parsed`` holds the JSON files that parsed."""
    if "modules.json" not in relpaths:
        if "config.json" not in relpaths:
            return [f"{where} has neither modules.json nor config.json: it is not a model folder"]
        return _transformer_problems(where, relpaths, "")
    if "modules.json" not in parsed:
        return []  # reported already: modules.json is not valid JSON
    modules = parsed["modules.json"]
    if not isinstance(modules, list) or not modules:
        return [f"modules.json in {where} names no modules ({COPY_AGAIN} or fix it)"]
    problems: list[str] = []
    transformer_folder: str | None = None
    for module in modules:
        if not isinstance(module, dict) or not isinstance(module.get("path", ""), str):
            return [f"modules.json in {where} is not a list of modules with a path and a type ({COPY_AGAIN} or fix it)"]
        folder = module.get("path", "").strip("/")
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer" and transformer_folder is None:
            transformer_folder = folder
        elif folder and kind not in MODULES_WITHOUT_FILES and not _has_files_under(relpaths, folder):
            problems.append(
                f"modules.json in {where} names the module folder {folder}/ ({kind}), which is missing "
                f"or empty (copy the whole model folder)"
            )
    if transformer_folder is not None:
        problems.extend(_transformer_problems(where, relpaths, transformer_folder))
    return problems


def _transformer_problems(where: str, relpaths: set[str], folder: str) -> list[str]:
    inside = f" in {folder}/" if folder else ""
    names = {PurePosixPath(relpath).name for relpath in relpaths if _parent(relpath) == folder}
    problems = []
    if not names & set(WEIGHTS_FILES):
        problems.append(f"{where} has no weights file{inside} (model.safetensors or pytorch_model.bin)")
    if not names & set(TOKENIZER_FILES):
        problems.append(f"{where} has no tokenizer{inside} (one of {', '.join(TOKENIZER_FILES)})")
    return problems


def _parent(relpath: str) -> str:
    parent = PurePosixPath(relpath).parent.as_posix()
    return "" if parent == "." else parent


def _has_files_under(relpaths: set[str], folder: str) -> bool:
    return any(relpath.startswith(f"{folder}/") for relpath in relpaths)
