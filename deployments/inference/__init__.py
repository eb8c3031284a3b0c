"""The serving layer: puts embedding models onto a V2-protocol inference server (MLServer by default).

No Django here. The control plane drives this library and listens to its progress callback;
tests and benchmarks drive it directly against a real MLServer.
"""

from .client import InferenceResult, V2Client
from .errors import (
    ChecksumMismatch,
    DeployFailed,
    FenceLost,
    InferenceError,
    InferenceFailed,
    InvalidModelId,
    LoadFailed,
    ModelNotFound,
    ServerUnavailable,
    SourceRefused,
)
from .green import (
    DELETE_STAGES,
    DEPLOY_STAGES,
    DeleteResult,
    DeployResult,
    GreenDeployer,
    StageEvent,
    deploy_time_bound,
)
from .ids import MAX_MODEL_ID_LENGTH, staging_name, validate_model_id
from .repository import ModelRepository, Revision
from .sources import ModelSource, open_source

__all__ = [
    "DELETE_STAGES",
    "DEPLOY_STAGES",
    "MAX_MODEL_ID_LENGTH",
    "ChecksumMismatch",
    "DeleteResult",
    "DeployFailed",
    "DeployResult",
    "FenceLost",
    "GreenDeployer",
    "InferenceError",
    "InferenceFailed",
    "InferenceResult",
    "InvalidModelId",
    "LoadFailed",
    "ModelNotFound",
    "ModelRepository",
    "ModelSource",
    "Revision",
    "ServerUnavailable",
    "SourceRefused",
    "StageEvent",
    "V2Client",
    "deploy_time_bound",
    "open_source",
    "staging_name",
    "validate_model_id",
]
