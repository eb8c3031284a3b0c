"""Deployers for fault injection only: things a real MLServer cannot be made to do on demand.

Selected in worker processes through INFERENCE_DEPLOYER_FACTORY, like any other deployer.
"""

from __future__ import annotations

import os
import time
from typing import Any

from deployments.inference import DEPLOY_STAGES, DeleteResult, DeployResult, GreenDeployer, StageEvent


class ProbeDeployer:
    """Walks through the deploy stages with a short pause each; no server involved.

    Used where the subject is the task engine (ordering, exclusivity) and a real deploy's
    1-2 s per task would only make the test slow, not more truthful.
    """

    def __init__(self, ready_timeout: float | None = None):
        self.pause = float(os.environ.get("PROBE_STAGE_PAUSE", "0.01"))
        self.guard: Any = lambda: None

    def close(self) -> None:
        pass

    def fenced(self, guard: Any) -> ProbeDeployer:
        self.guard = guard
        return self

    def endpoint(self, model_id: str) -> str:
        return f"probe://{model_id}"

    def live_revision(self, model_id: str) -> str | None:
        return None

    def deploy(self, model_id: str, source_uri: str, *, progress: Any = None, **kwargs: Any) -> DeployResult:
        for stage in DEPLOY_STAGES:
            self.guard()
            progress(StageEvent(stage, "started"))
            time.sleep(self.pause)
            progress(StageEvent(stage, "done", duration_s=self.pause))
        return DeployResult(model_id, "probe-rev", None, self.endpoint(model_id), 3)

    def delete(self, model_id: str, progress: Any = None) -> DeleteResult:
        return DeleteResult(model_id, was_deployed=False)


def build_probe_deployer(ready_timeout: float | None = None) -> ProbeDeployer:
    return ProbeDeployer(ready_timeout)


class RaisingDeployer(ProbeDeployer):
    """Raises from inside a stage what the serving layer never would: the engine must still finish the task."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__()
        self.stage, self.error = stage, error

    def deploy(self, model_id: str, source_uri: str, **kwargs: Any):
        kwargs["progress"](StageEvent(self.stage, "started"))
        raise self.error


def build_exploding_deployer(ready_timeout: float | None = None) -> RaisingDeployer:
    return RaisingDeployer("validate", RuntimeError("deployer crashed"))


def build_stopped_deployer(ready_timeout: float | None = None) -> RaisingDeployer:
    """Stopped mid-pipeline the way django-q2's timeout stops a worker: a SystemExit from inside the job."""
    return RaisingDeployer("fetch", SystemExit("task timed out"))


def build_unbuildable_deployer(ready_timeout: float | None = None) -> GreenDeployer:
    """A deployer whose construction fails (a bad setting, an unreachable dependency)."""
    raise RuntimeError("the deployer cannot be built")
