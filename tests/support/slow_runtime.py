"""A fault for MLServer to load: a runtime whose load takes ``extra.load_seconds`` and that serves nothing.

It stands for a big model loading while something else asks the same replica for work.
"""

from __future__ import annotations

import asyncio

from mlserver import MLModel

SLOW_RUNTIME = "tests.support.slow_runtime.SlowLoadingRuntime"


class SlowLoadingRuntime(MLModel):
    async def load(self) -> bool:
        extra = dict(self.settings.parameters.extra or {}) if self.settings.parameters else {}
        await asyncio.sleep(float(extra.get("load_seconds", 5)))
        return True
