"""The MLServer runtime that serves sentence-transformers model folders.

MLServer imports this module by the dotted path written into each ``model-settings.json``.
Everything heavy (torch, sentence-transformers) is imported inside ``load()`` so the server
starts quickly, and every blocking call runs in a thread so one slow batch never stalls the
server's event loop (and with it every other model's traffic).

Input: one BYTES tensor of strings. Output: FP32 ``[n, dim]`` embeddings, normalised when the
model's own module list ends in a Normalize layer (as all-MiniLM-L6-v2's does) or when the
settings' ``extra.normalize`` asks for it. Each response carries the revision that answered it in
its parameters and as its ``model_version``, so a deploy can prove which revision a name serves; its
``model_name`` is the name the client called (the router's header says so for a model's stable URL,
else the revision's own name ``<id>~<revision>``), and the memory the loaded
model holds (``memory_bytes``: its parameters' and buffers' bytes, counted once at load), so a
deploy can record what the revision costs a replica.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataTensor, Parameters
from mlserver.utils import get_model_uri

from .ids import CALLED_NAME_HEADER, REVISION_SEPARATOR
from .runtime_markers import INSTANCE_MARKER_DIR_ENV


class BadInput(MLServerError):
    def __init__(self, message: str):
        super().__init__(message, status_code=400)


class ModelLoadError(MLServerError):
    """Carries the framework's reason to the caller of ``load`` (an unhandled error would be a bare 500)."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400)


# How long unload() waits for requests already running on this instance before freeing it.
DRAIN_TIMEOUT_S = 30.0

# Where models run: the settings' ``extra.device``, else this environment variable of the server, else auto.
DEVICE_ENV = "INFERENCE_DEVICE"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(requested: str, cuda_available: bool) -> str:
    """The torch device to load on: ``auto`` is CUDA when the server has it, the CPU otherwise."""
    if not _DEVICE.fullmatch(requested):
        raise ModelLoadError(f"unknown device {requested!r}: use auto, cpu, mps, cuda or cuda:N")
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    return requested


def model_memory_bytes(model: Any) -> int:
    """The bytes a loaded torch module holds: its parameters and buffers (shared tensors once).

    Counted from the tensors, not the process's resident memory: deterministic, and unmoved by other
    models loading in the same replica at the same time (which makes RSS deltas noise).
    """
    tensors = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


class SentenceTransformerRuntime(MLModel):
    async def load(self) -> bool:
        extra: dict[str, Any] = dict(self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self._revision = str(extra.get("revision", ""))
        self._model_id = str(extra.get("model_id") or self.name.partition(REVISION_SEPARATOR)[0])
        self._force_normalize = bool(extra.get("normalize", False))
        self._requested_device = str(extra.get("device") or os.environ.get(DEVICE_ENV, "auto"))
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        uri = await get_model_uri(self.settings)
        try:
            self._model = await asyncio.to_thread(self._load_model, uri)
        except Exception as exc:
            raise ModelLoadError(f"cannot load a sentence-transformers model from {uri}: {exc}") from exc
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension  # sentence-transformers < 5.2
        )
        self._dimensions = int(get_dimension())
        self._memory_bytes = model_memory_bytes(self._model)
        self._marker = self._create_marker()
        return True

    def _load_model(self, uri: str) -> Any:
        # Offline by construction: a model folder, never a hub download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self._device = resolve_device(self._requested_device, torch.cuda.is_available())
        return SentenceTransformer(uri, device=self._device, local_files_only=True)

    async def metadata(self) -> MetadataModelResponse:
        """The V2 metadata, with the tensors and the revision this instance serves (what is live)."""
        metadata = await super().metadata()
        metadata.versions = [self._revision] if self._revision else metadata.versions
        metadata.inputs = [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
        metadata.outputs = [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, self._dimensions])]
        metadata.parameters = Parameters(
            revision=self._revision, dimensions=self._dimensions, device=self._device, memory_bytes=self._memory_bytes
        )
        return metadata

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise BadInput(f"expected exactly one input tensor of strings, got {len(payload.inputs)}")
        request_input = payload.inputs[0]
        if request_input.datatype != "BYTES":
            raise BadInput(f"input {request_input.name!r} must be BYTES, got {request_input.datatype}")
        texts = StringCodec.decode_input(request_input)
        if not texts:
            raise BadInput("input holds no texts")
        # Take the model before the first await: during an atomic swap the server unloads this
        # instance while requests it already routed here are still running, and they must finish.
        model = self._model
        self._in_flight += 1
        self._drained.clear()
        try:
            embeddings = await asyncio.to_thread(self._encode, model, texts)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()
        return InferenceResponse(
            model_name=self._called_name(payload),
            model_version=self._revision or None,
            id=payload.id,
            parameters=Parameters(
                revision=self._revision, dimensions=self._dimensions, memory_bytes=self._memory_bytes
            ),
            outputs=[NumpyCodec.encode_output("embedding", embeddings)],
        )

    def _called_name(self, payload: InferenceRequest) -> str:
        """The model's id when the router says the client called it by its stable URL, else this revision's
        own name: the protocol answers the name of the model that was called."""
        headers = (payload.parameters.headers if payload.parameters else None) or {}
        return self._model_id if headers.get(CALLED_NAME_HEADER) == self._model_id else self.name

    def _encode(self, model: Any, texts: list[str]) -> Any:
        import numpy as np

        vectors = model.encode(
            texts,
            batch_size=32,
            convert_to_numpy=True,
            normalize_embeddings=self._force_normalize,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def unload(self) -> bool:
        try:
            await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            pass  # the requests still running hold their own reference to the model
        self._model = None  # the weights go with the last reference (requests hold their own)
        self._remove_marker()
        return True

    def _create_marker(self) -> Path | None:
        folder = os.environ.get(INSTANCE_MARKER_DIR_ENV)
        if not folder:
            return None
        marker = Path(folder) / f"{self.name}@{os.getpid()}-{id(self)}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return marker

    def _remove_marker(self) -> None:
        marker = getattr(self, "_marker", None)
        if marker is not None:
            marker.unlink(missing_ok=True)
