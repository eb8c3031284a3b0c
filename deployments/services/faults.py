"""A fault hook for drills: hold an attempt at a chosen stage, so a drill can kill or pause its worker there.

Off unless the environment variable ``CONTROLPLANE_FAULT_HOLD_AT`` names a stage: it is read from
the worker's environment only, never from a setting or a request. When an attempt (by default the
first, ``CONTROLPLANE_FAULT_HOLD_ATTEMPT``) starts that stage, the worker writes its pid to the file
``CONTROLPLANE_FAULT_HOLD_FILE`` and waits until the drill removes the file (or
``CONTROLPLANE_FAULT_HOLD_SECONDS`` pass, default 600).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_AT_ENV = "CONTROLPLANE_FAULT_HOLD_AT"
HOLD_FILE_ENV = "CONTROLPLANE_FAULT_HOLD_FILE"
HOLD_ATTEMPT_ENV = "CONTROLPLANE_FAULT_HOLD_ATTEMPT"
HOLD_SECONDS_ENV = "CONTROLPLANE_FAULT_HOLD_SECONDS"


def hold_if_asked(stage: str, attempt: int) -> None:
    """Block here while a drill holds this stage of this attempt; return at once otherwise."""
    if os.environ.get(HOLD_AT_ENV) != stage or int(os.environ.get(HOLD_ATTEMPT_ENV, "1")) != attempt:
        return
    marker = Path(os.environ[HOLD_FILE_ENV])
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + float(os.environ.get(HOLD_SECONDS_ENV, "600"))
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
