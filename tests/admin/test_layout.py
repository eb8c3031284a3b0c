"""The models list laid out by a real browser at 1400 px: every column within the page, none cut off.

Chromium renders the admin's own HTML and CSS (the static files read from Django's admin app); the test
is skipped where no Chromium is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import django.contrib.admin
import pytest

from deployments.models import Drift
from tests.admin.test_admin import MODELS_URL
from tests.support.factories import (
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeletionFactory,
    FinishedDeploymentFactory,
)

pytestmark = pytest.mark.django_db

ADMIN_STATIC = Path(django.contrib.admin.__file__).parent / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# Written into the page's body once it is laid out: where the table ends and where its box ends.
MEASURE = """<script>window.addEventListener("load", () => {
  // Where the content ends: a cell's text that does not wrap overflows its box without widening it.
  const element = document.querySelector("%s");
  const right = element.getBoundingClientRect().left + Math.max(element.scrollWidth, element.offsetWidth);
  const box = document.querySelector("%s").getBoundingClientRect();
  document.body.dataset.measured = `${Math.round(right)} ${Math.round(box.right)} ${window.innerWidth}`;
});</script></body>"""


def laid_out(
    html: str, tmp_path: Path, width: int, table: str = "#result_list", box: str = ".results"
) -> tuple[int, int, int]:
    """Where ``table`` ends, where ``box`` ends and the window's width, as Chromium lays the page out."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("/static/", f"{ADMIN_STATIC.as_uri()}/").replace("</body>", MEASURE % (table, box)))
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900"]
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    table_right, box_right, viewport = map(int, re.search(r'data-measured="(\d+) (\d+) (\d+)"', dom).groups())
    return table_right, box_right, viewport


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to lay the page out")
def test_the_models_list_fits_1400_px(admin_client, tmp_path):
    for index, model_id in enumerate(["all-minilm-l6-v2", "multilingual-e5-large-instruct", "nomic-embed-text-v1.5"]):
        model = EmbeddingModelFactory(
            id=model_id,
            name=model_id.replace("-", " ").title(),
            state="deployed",
            live_revision=f"{index}123456789abcdef",
            endpoint=f"http://127.0.0.1:8080/v2/models/{model_id}/infer",
            dimensions=1024,
        )
        FinishedDeploymentFactory(embedding_model_id=model_id)
        FailedDeploymentFactory(embedding_model_id=model_id)
        FinishedDeletionFactory(embedding_model_id=model_id)
        Drift.objects.create(embedding_model_id=model_id, registered_revision=model.live_revision, detail="not served")
    html = admin_client.get(MODELS_URL).content.decode()
    assert html.count('class="cr-truncate" title="http://127.0.0.1:8080/v2/models/') == 3  # whole in the tooltip

    table_right, box_right, viewport = laid_out(html, tmp_path, 1400)

    assert viewport == 1400
    assert table_right <= box_right, f"the table overflows its box by {table_right - box_right} px"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to lay the page out")
def test_a_long_failure_reason_stays_inside_the_dashboards_panel(admin_client, tmp_path):
    FailedDeploymentFactory(detail="smoke_test: embeddings have 3 dimensions, expected 384 " * 4)
    FailedDeploymentFactory(detail="fetch: /srv/models/" + "x" * 200 + "/model.safetensors is not readable")
    html = admin_client.get("/admin/").content.decode()

    cell_right, panel_right, _ = laid_out(html, tmp_path, 1400, "td.cr-reason", "div.module.cr-wide:has(.cr-failures)")

    assert cell_right <= panel_right, f"a reason runs {cell_right - panel_right} px past its panel"
