"""The models list laid out by a real browser at 1400 px: every column within the page, none cut off.

Chromium renders the admin's own HTML and CSS (the static files read from Django's admin app); the test
is skipped where no Chromium is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import django.contrib.admin
import pytest

from deployments.admin.display import task_admin_url
from deployments.inference import InferenceError
from deployments.models import Drift, EngineEvent
from deployments.services.reconciler import record_servers
from tests.admin.test_admin import MODELS_URL
from tests.support.factories import (
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeletionFactory,
    FinishedDeploymentFactory,
    RunningDeploymentFactory,
    cluster_with_heartbeat,
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


# Written into the page once it is laid out: every heading's and link's text whose contrast with what is
# behind it is below WCAG's AA minimum (4.5, or 3 for large text).
CONTRAST = """<script>window.addEventListener("load", () => {
  const rgba = (css) => {
    const parts = css.match(/rgba?\\(([^)]*)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3]));
  // What shows behind an element: the backgrounds of it and its ancestors, laid on white from the page down.
  const behind = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const colour = rgba(getComputedStyle(e).backgroundColor);
      layers.push(colour);
      if (colour[3] === 1) break;
    }
    return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255]);
  };
  const luminance = (rgb) => {
    const [r, g, b] = rgb.map((c) => c / 255).map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [light, dark] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (light + 0.05) / (dark + 0.05);
  };
  const ownsText = (e) => [...e.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
  const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  const check = () => {
    const texts = new Set();
    for (const root of document.querySelectorAll("h1, h2, h3, h4, h5, h6, caption, a")) {
      for (const e of [root, ...root.querySelectorAll("*")]) if (ownsText(e) && visible(e)) texts.add(e);
    }
    const failures = [];
    for (const e of texts) {
      const style = getComputedStyle(e);
      const background = behind(e);
      const text = over(rgba(style.color), background);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      const contrast = ratio(text, background);
      if (contrast < (large ? 3 : 4.5)) {
        failures.push({text: e.textContent.trim().slice(0, 60), contrast: Math.round(contrast * 100) / 100,
                       colour: style.color, background: `rgb(${background.map(Math.round).join(", ")})`});
      }
    }
    return {checked: texts.size, failures};
  };
  const report = document.createElement("pre");
  report.id = "contrast-report";
  report.textContent = JSON.stringify(check());
  document.body.append(report);
});</script></body>"""


def rendered(html: str, tmp_path: Path, width: int, script: str, dark: bool = False) -> str:
    """The DOM Chromium made of ``html`` at ``width`` px (the admin's static files read from Django), with
    ``script`` run in the page; ``dark``: the browser prefers a dark scheme, so the admin's theme is dark."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("/static/", f"{ADMIN_STATIC.as_uri()}/").replace("</body>", script))
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900"]
    if dark:
        browser.append("--force-dark-mode")
    return subprocess.run(
        [*browser, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def laid_out(
    html: str, tmp_path: Path, width: int, table: str = "#result_list", box: str = ".results"
) -> tuple[int, int, int]:
    """Where ``table`` ends, where ``box`` ends and the window's width, as Chromium lays the page out."""
    dom = rendered(html, tmp_path, width, MEASURE % (table, box))
    table_right, box_right, viewport = map(int, re.search(r'data-measured="(\d+) (\d+) (\d+)"', dom).groups())
    return table_right, box_right, viewport


def low_contrast(html: str, tmp_path: Path) -> tuple[list[int], list[dict]]:
    """How many texts of headings and links were checked in the light theme and the dark one, and those
    below WCAG AA (each named with its theme)."""
    checked, failures = [], []
    for theme in ("light", "dark"):
        dom = rendered(html, tmp_path, 1400, CONTRAST, dark=theme == "dark")
        report = json.loads(unescape(re.search(r'<pre id="contrast-report">(.*?)</pre>', dom, re.S).group(1)))
        checked.append(report["checked"])
        failures += [{"theme": theme, **failure} for failure in report["failures"]]
    return checked, failures


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


@pytest.fixture
def busy_control_room(settings):
    """Something in every panel of the dashboard, and a row of every kind in the lists."""
    serving, empty, down = "http://127.0.0.1:8091", "http://127.0.0.1:8092", "http://127.0.0.1:8093"
    settings.INFERENCE_REPLICA_URLS = [serving, empty, down, "http://127.0.0.1:8094"]
    model = EmbeddingModelFactory(id="minilm", state="deployed", live_revision="0123456789abcdef", dimensions=384)
    record_servers({serving: {"minilm~0123456789abcdef"}, empty: set(), down: InferenceError("refused")})
    Drift.objects.create(embedding_model_id=model.id, registered_revision=model.live_revision, detail="not served")
    RunningDeploymentFactory(embedding_model_id=model.id)
    DeploymentTaskFactory(embedding_model_id=model.id)
    FinishedDeploymentFactory(embedding_model_id=model.id)
    failed = FailedDeploymentFactory(embedding_model_id=model.id, detail="smoke_test: expected 768 dimensions")
    FailedDeploymentFactory(retry_of=failed, attempt=2, embedding_model_id=model.id)
    FinishedDeletionFactory()
    cluster = cluster_with_heartbeat(3600)  # stale: the engine alert shows too
    EngineEvent.objects.create(kind=EngineEvent.Kind.CLUSTER_RESTARTED, cluster=cluster, message="no canary ran")
    return model, failed


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to lay the page out")
@pytest.mark.parametrize("page", ["dashboard", "deployments", "a deployment", "models", "a model"])
def test_every_heading_and_link_reads_against_what_is_behind_it(admin_client, tmp_path, busy_control_room, page):
    model, failed = busy_control_room
    url = {
        "dashboard": "/admin/",
        "deployments": "/admin/deployments/deploymenttask/",
        "a deployment": task_admin_url(failed.kind, failed.pk),
        "models": MODELS_URL,
        "a model": f"{MODELS_URL}{model.pk}/change/",
    }[page]
    html = admin_client.get(url).content.decode()
    if page == "dashboard":
        assert "Worker clusters: latest events" in html and "Inference replicas: 1 of 4 serving" in html

    checked, failures = low_contrast(html, tmp_path)

    assert min(checked) >= 10, checked  # the page was read
    assert failures == [], "\n".join(map(str, failures))
