"""The serving layer: puts embedding models onto a fleet of V2-protocol inference replicas (MLServer by
default) behind a router (Envoy).

No Django here. The control plane drives this library and listens to its progress callback;
tests and benchmarks drive it directly against real MLServer replicas and a real Envoy.
"""

from .client import InferenceResult, V2Client
from .errors import (
    ChecksumMismatch,
    DeployFailed,
    FenceLost,
    InferenceError,
    InferenceFailed,
    InvalidArtifacts,
    InvalidModelId,
    LoadFailed,
    ModelNotFound,
    ServerUnavailable,
    SourceRefused,
    SourceUnavailable,
)
from .fleet import Fleet, FleetView
from .green import (
    DELETE_STAGES,
    DEPLOY_STAGES,
    DeleteResult,
    DeployResult,
    GreenDeployer,
    StageEvent,
    deploy_time_bound,
)
from .ids import MAX_MODEL_ID_LENGTH, MODEL_ID_PATTERN, served_name, validate_model_id
from .integrity import artifact_problems, check_artifacts
from .repository import ModelRepository, Revision
from .sources import ModelSource, open_source

__all__ = [
    "DELETE_STAGES",
    "DEPLOY_STAGES",
    "MAX_MODEL_ID_LENGTH",
    "MODEL_ID_PATTERN",
    "ChecksumMismatch",
    "DeleteResult",
    "DeployFailed",
    "DeployResult",
    "FenceLost",
    "Fleet",
    "FleetView",
    "GreenDeployer",
    "InferenceError",
    "InferenceFailed",
    "InferenceResult",
    "InvalidArtifacts",
    "InvalidModelId",
    "LoadFailed",
    "ModelNotFound",
    "ModelRepository",
    "ModelSource",
    "Revision",
    "ServerUnavailable",
    "SourceRefused",
    "SourceUnavailable",
    "StageEvent",
    "V2Client",
    "artifact_problems",
    "check_artifacts",
    "deploy_time_bound",
    "open_source",
    "served_name",
    "validate_model_id",
]
