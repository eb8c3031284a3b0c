"""Deployers for fault injection only: things a real MLServer cannot be made to do on demand.

Selected in worker processes through INFERENCE_DEPLOYER_FACTORY, like any other deployer.
"""

from __future__ import annotations

import os
import time
from typing import Any

from deployments.inference import DEPLOY_STAGES, DeleteResult, DeployResult, GreenDeployer, StageEvent
from deployments.services.deployer import build_green_deployer


class _NoClient:
    def close(self) -> None:
        pass


class ProbeDeployer:
    """Walks through the deploy stages with a short pause each; no server involved.

    Used where the subject is the task engine (ordering, exclusivity) and a real deploy's
    1-2 s per task would only make the test slow, not more truthful.
    """

    def __init__(self, ready_timeout: float | None = None):
        self.client = _NoClient()
        self.pause = float(os.environ.get("PROBE_STAGE_PAUSE", "0.01"))
        self.guard: Any = lambda: None

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


class ExplodingDeployer(ProbeDeployer):
    """Raises something the serving layer never would: the engine must still finish the task."""

    def deploy(self, model_id: str, source_uri: str, **kwargs: Any):
        kwargs["progress"](StageEvent("validate", "started"))
        raise RuntimeError("deployer crashed")


def build_exploding_deployer(ready_timeout: float | None = None) -> ExplodingDeployer:
    return ExplodingDeployer(ready_timeout)


def build_hanging_green_deployer(ready_timeout: float | None = None) -> GreenDeployer:
    """The real green deployer, frozen once green is loaded: the moment a worker is killed in the test."""
    deployer = build_green_deployer(ready_timeout)
    real_deploy = deployer.deploy

    def deploy(model_id: str, source_uri: str, *, progress: Any = None, **kwargs: Any) -> DeployResult:
        def hang_after_green(event: StageEvent) -> None:
            progress(event)
            if event.stage == "stage_green" and event.state == "done":
                time.sleep(3600)

        return real_deploy(model_id, source_uri, progress=hang_after_green, **kwargs)

    deployer.deploy = deploy
    return deployer


def build_unbuildable_deployer(ready_timeout: float | None = None) -> GreenDeployer:
    """A deployer whose construction fails (a bad setting, an unreachable dependency)."""
    raise RuntimeError("the deployer cannot be built")


class StoppedDeployer(ProbeDeployer):
    """Stopped mid-pipeline the way django-q2's timeout stops a worker: a SystemExit from inside the job."""

    def deploy(self, model_id: str, source_uri: str, **kwargs: Any):
        kwargs["progress"](StageEvent("fetch", "started"))
        raise SystemExit("task timed out")


def build_stopped_deployer(ready_timeout: float | None = None) -> StoppedDeployer:
    return StoppedDeployer(ready_timeout)
