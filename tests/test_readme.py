"""README.md holds: every command it names exists and is written so it runs from a fresh checkout (each
listed once), every setting the code reads is in its configuration table, the deploy config keys it
lists are those a task accepts, and its layout names what the tree holds. The settings' docstring
names what listens where by default."""

from __future__ import annotations

import re
from pathlib import Path

from django.apps import apps
from django.core.management import get_commands

import controlplane.settings
from deployments.task_config import CONFIG_SERIALIZERS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
README = (PROJECT_ROOT / "README.md").read_text()

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
# Variables the scripts read that belong to the system, not to the control plane.
SYSTEM_VARIABLES = {"TMPDIR", "HOME", "PATH"}


def section(title: str) -> str:
    """The README's text from the heading ``## <title>`` to the next heading of that level."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def fenced_blocks() -> list[str]:
    return FENCED.findall(README)


def inline_spans() -> list[str]:
    return INLINE.findall(FENCED.sub("", README))


def test_every_manage_py_command_the_readme_names_exists():
    code = "\n".join(fenced_blocks() + inline_spans())
    named = set(re.findall(r"manage\.py\"?,? +\"?([a-z_]+)", code))
    assert {"deploy_models", "tasks", "create_token", "run_workers", "check"} <= named  # the regex finds them
    assert sorted(named - set(get_commands())) == []


def test_commands_in_code_blocks_run_from_a_fresh_checkout():
    """manage.py is not on the PATH and its shebang finds the system's Python, which has no Django: a
    command line says which Python runs it (the virtual environment's, or python in a container)."""
    for block in fenced_blocks():
        for line in block.splitlines():
            for match in re.finditer(r"manage\.py", line):
                before = line[: match.start()]
                assert re.search(r'(\.venv/bin/python |bin/python |"python", ")$', before), line
    for span in inline_spans():
        # An inline span may name the file or a command (`manage.py check`); one that runs it says which Python.
        if "manage.py" in span and " " in span and not span.startswith("manage.py "):
            assert re.search(r"(\.venv/bin/|bin/)python manage\.py", span), span


def makefile_targets() -> set[str]:
    text = (PROJECT_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.MULTILINE))


def test_every_make_target_the_readme_names_exists():
    code = "\n".join(fenced_blocks() + inline_spans())
    named = set(re.findall(r"(?<![\w-])make +([a-z][\w-]*)", code))
    assert {"run", "test", "bench", "setup"} <= named
    assert sorted(named - makefile_targets()) == []


ENV_READS = [
    re.compile(r'os\.environ\.get\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'os\.environ\[\s*"([A-Z][A-Z0-9_]*)"\s*\]'),
    re.compile(r'os\.environ\.setdefault\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'os\.getenv\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\b_?env_?\w*\(\s*"([A-Z][A-Z0-9_]*)"'),  # the settings' env_bool("X"), env_list("X")
    re.compile(r"\$\{([A-Z][A-Z0-9_]*):-"),  # shell: ${X:-default}
]


# The serving layer has no Django settings: it reads its own variables where it uses them (MLflow's).
CODE_READS = [
    re.compile(r'\benviron\.get\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\benviron\[\s*"([A-Z][A-Z0-9_]*)"\s*\]'),
    re.compile(r'\bos\.getenv\(\s*"([A-Z][A-Z0-9_]*)"'),
]


def variables_read() -> set[str]:
    sources = [PROJECT_ROOT / "controlplane" / "settings.py", PROJECT_ROOT / "controlplane" / "gunicorn.conf.py"]
    sources += sorted((PROJECT_ROOT / "scripts").glob("*.sh"))
    found = {name for source in sources for pattern in ENV_READS for name in pattern.findall(source.read_text())}
    code = sorted((PROJECT_ROOT / "deployments").rglob("*.py"))
    found |= {name for source in code for pattern in CODE_READS for name in pattern.findall(source.read_text())}
    return found - SYSTEM_VARIABLES


def test_every_setting_the_code_reads_is_in_the_configuration_table():
    read = variables_read()
    assert {"DATABASE_URL", "ALLOWED_HOSTS", "WEB_ADDR", "CONTROLPLANE_VAR_DIR", "TEST_DATABASE_URL"} <= read
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_ALLOWED_TRACKING_URIS"} <= read
    table_rows = [line for line in section("Configuration").splitlines() if line.startswith("| `")]
    documented = {name for row in table_rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split(" | ")[0])}
    assert sorted(read - documented) == []


def test_the_layout_names_every_model_and_every_part_of_the_app():
    layout = section("Layout")
    models = [model.__name__ for model in apps.get_app_config("deployments").get_models(include_auto_created=False)]
    assert "Task" in models and "DeploymentTask" in models
    assert sorted(name for name in models if not re.search(rf"\b{name}\b", layout)) == []
    # The models.py entry names models only (a name there that is no model is a stale one).
    entry = re.search(r"^  models\.py(.*?)(?=^  \S)", layout, re.MULTILINE | re.DOTALL).group(1)
    named = set(re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+|Task)\b", entry))
    assert sorted(named - set(models)) == []
    parts = [
        path.name + ("/" if path.is_dir() else "")
        for path in (PROJECT_ROOT / "deployments").iterdir()
        if not path.name.startswith(("_", ".")) and path.name not in {"apps.py", "migrations"}
    ]
    assert sorted(part for part in parts if part not in layout) == []


def test_no_line_of_the_command_list_is_there_twice():
    (commands,) = FENCED.findall(section("Management commands"))
    lines = [line.strip() for line in commands.splitlines() if line.strip()]
    assert len(lines) > 10 and sorted({line for line in lines if lines.count(line) > 1}) == []


def top_level_names(text: str) -> list[str]:
    """The `names` of ``text`` outside parentheses: a list's items, not what each item says of itself."""
    names, depth = [], 0
    for match in re.finditer(r"[()]|`([^`\n]+)`", text):
        if match.group() in "()":
            depth += 1 if match.group() == "(" else -1
        elif depth == 0:
            names.append(match.group(1))
    return names


def test_the_deploy_config_keys_listed_are_those_a_deploy_accepts():
    api = section("The API")
    listed = api[api.index("Deploy `config` keys") + len("Deploy `config` keys") : api.index("Unknown keys")]
    assert sorted(top_level_names(listed)) == sorted(CONFIG_SERIALIZERS["deployment"]().fields)
    assert "no config keys" in api and not CONFIG_SERIALIZERS["deletion"]().fields


def test_the_settings_docstring_names_what_listens_on_the_default_addresses():
    described = " ".join(controlplane.settings.__doc__.split())
    assert "Envoy on 127.0.0.1:8080" in described and "MLServer replicas on 127.0.0.1:8090" in described
