"""What the operators' commands share: argument checks (exit 2, one line), the config JSON, following
tasks with a progress bar, and plain-text tables. Not a command itself (the leading underscore)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from deployments import selectors
from deployments.clock import format_time
from deployments.inference import InvalidModelId, validate_model_id
from deployments.models import TERMINAL_STATUSES, EmbeddingModel, Task, TaskKind, TaskStatus
from deployments.services import ModelNotRegistered, TaskHandOffFailed
from deployments.services.audit import Actor, command_actor
from deployments.services.bulk import submit_many
from deployments.services.tasks import ensure_registered
from deployments.task_config import InvalidTaskConfig, validate_config
from deployments.text import cut_between_words

BAD_ARGUMENTS = 2
TASKS_NOT_DONE = 1

# --wait follows the tasks this long at most, checking every WAIT_POLL seconds.
WAIT_TIMEOUT = 3600.0
WAIT_POLL = 1.0

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def bad_arguments(message: str) -> CommandError:
    """A one-line error for arguments we cannot act on; exit code 2, as argparse uses."""
    return CommandError(" ".join(message.split()), returncode=BAD_ARGUMENTS)


def parse_duration(value: str, option: str) -> timedelta:
    match = DURATION.match(value or "")
    if not match:
        raise bad_arguments(f"{option}: {value!r} is not a duration like 90s, 30m, 12h, 7d or 2w")
    return timedelta(**{DURATION_UNITS[match.group(2)]: float(match.group(1))})


def comma_separated(values: Sequence[str] | None) -> list[str]:
    """``--status failed,refused --status canceled`` -> ['failed', 'refused', 'canceled']."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def check_choices(values: list[str], allowed: Sequence[str], option: str) -> list[str]:
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise bad_arguments(f"{option}: unknown {', '.join(unknown)}; one of {', '.join(allowed)}")
    return values


def kinds_option(kinds: list[str]) -> list[str]:
    """The --kind values, checked; every kind when none is given."""
    return check_choices(kinds, TaskKind.values, "--kind") or list(TaskKind.values)


def actor_of(command: BaseCommand) -> Actor:
    """Who acts when a command runs: the command (named as Django found it) and the OS user running it."""
    return command_actor(type(command).__module__.rsplit(".", 1)[-1])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int | None = 70) -> str:
    """A plain-text table: columns padded to their widest cell, cells longer than ``max_width`` cut with an
    ellipsis (None: never cut) between words, times in the one format (deployments.clock)."""

    def cell(value: Any) -> str:
        if isinstance(value, datetime):
            value = format_time(value)
        text = "—" if value is None or value == "" else " ".join(str(value).split())
        return text if max_width is None else cut_between_words(text, max_width)

    body = [[cell(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in body]) for i, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join(lines)


def took(task: Task) -> str:
    if task.started_at and task.finished_at:
        return f"{(task.finished_at - task.started_at).total_seconds():.1f}s"
    if task.started_at:
        return f"{(timezone.now() - task.started_at).total_seconds():.0f}s…"
    return ""


class TaskSubmissionCommand(BaseCommand):
    """deploy_models and delete_models: pick models, check everything, submit one batch, maybe follow it."""

    kind: str
    verb: str  # "deploy" / "delete"
    config_help: str | None = None  # the --config option's help; None: the kind takes no options, no --config

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model_ids", nargs="*", metavar="MODEL_ID", help="Embedding model ids.")
        parser.add_argument("--file", type=Path, help="A file with one model id a line ('#' starts a comment).")
        parser.add_argument("--all", action="store_true", help="Every registered model.")
        parser.add_argument(
            "--state",
            action="append",
            metavar="STATE",
            help=f"Registered models in this state ({', '.join(EmbeddingModel.State.values)}); repeatable.",
        )
        if self.config_help is not None:
            parser.add_argument("--config", help=self.config_help)
        parser.add_argument("--wait", action="store_true", help="Follow the tasks to the end; exit 1 unless all done.")
        parser.add_argument(
            "--timeout", type=float, help=f"Seconds --wait follows (default {WAIT_TIMEOUT:g}); only with --wait."
        )
        parser.add_argument(
            "--poll", type=float, help=f"Seconds between --wait's checks (default {WAIT_POLL:g}); only with --wait."
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would be submitted; submit nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        # Everything is checked before anything is written: a bad argument leaves nothing half-done.
        check_wait_options(options)
        model_ids = self.select_models(options)
        config = self.parse_config(options.get("config"))
        if not model_ids:
            self.stdout.write("No registered model matches; nothing to do.")
            return
        noun = f"{self.kind} task(s)"
        if options["dry_run"]:
            shown = ", ".join(model_ids[:20]) + (f", … ({len(model_ids) - 20} more)" if len(model_ids) > 20 else "")
            self.stdout.write(f"Dry run: would create {len(model_ids)} {noun}, config {json.dumps(config)}: {shown}")
            return
        started = time.monotonic()
        try:
            with quiet_queue_log(options["verbosity"]):
                tasks = submit_many(self.kind, model_ids, config, requested_by=actor_of(self))
        except ModelNotRegistered as exc:  # unregistered between our check and the insert
            raise bad_arguments(str(exc)) from exc
        except TaskHandOffFailed as exc:
            # Created all the same: they stay pending and the sweeper sends them; nothing to run again.
            self.stdout.write(f"Created {len(model_ids)} {noun}.")
            raise CommandError(f"{exc} (the queue said: {exc.cause})", returncode=TASKS_NOT_DONE) from exc
        self.stdout.write(f"Created {len(tasks)} {noun} in {time.monotonic() - started:.2f}s.")
        if options["verbosity"] >= 2 or (len(tasks) <= 20 and not options["wait"]):
            for task in tasks:
                self.stdout.write(f"  {task.pk}  {task.embedding_model_id}")
        if options["wait"]:
            # The bar writes to the raw stream: OutputWrapper.write would end each \r-update with a newline.
            timeout, poll = options["timeout"] or WAIT_TIMEOUT, options["poll"] or WAIT_POLL
            finished = follow_tasks(tasks, self.stderr._out, timeout, poll)
            report_outcome(self.stdout, finished, started)

    def select_models(self, options: dict[str, Any]) -> list[str]:
        named = list(options["model_ids"])
        if options["file"] is not None:
            named += read_id_file(options["file"])
        states = check_choices(comma_separated(options["state"]), EmbeddingModel.State.values, "--state")
        filtered = options["all"] or bool(states)
        if named and filtered:
            raise bad_arguments("name models (MODEL_ID, --file) or filter them (--all, --state), not both")
        if options["all"] and states:
            raise bad_arguments("--all and --state exclude each other")
        if filtered:
            return selectors.embedding_model_ids(states=states or None)
        if not named:
            raise bad_arguments(f"which models? name them, or use --file, --all or --state (see {self.verb}_models -h)")
        for model_id in named:
            try:
                validate_model_id(model_id)
            except InvalidModelId as exc:
                raise bad_arguments(f"{model_id!r} is not a model id: {exc}") from exc
        try:
            ensure_registered(named)
        except ModelNotRegistered as exc:
            raise bad_arguments(str(exc)) from exc
        return list(dict.fromkeys(named))

    def parse_config(self, raw: str | None) -> dict[str, Any]:
        if raw is None:
            return {}
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise bad_arguments(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise bad_arguments("--config must be a JSON object, e.g. '{\"expected_dimensions\": 384}'")
        # The API's own rules for a task's config (known keys, types, limits): one set of rules everywhere.
        try:
            return validate_config(self.kind, config)
        except InvalidTaskConfig as exc:
            raise bad_arguments(f"--config: {exc}") from exc


def check_wait_options(options: dict[str, Any]) -> None:
    """--timeout and --poll tune --wait: given without it they would be silently ignored, so they are refused."""
    given = [f"--{name}" for name in ("timeout", "poll") if options[name] is not None]
    if given and not options["wait"]:
        verb = "applies" if len(given) == 1 else "apply"
        raise bad_arguments(f"{' and '.join(given)} {verb} only with --wait (add --wait, or leave them out)")
    for name in ("timeout", "poll"):
        if options[name] is not None and not options[name] > 0:
            raise bad_arguments(f"--{name}: {options[name]:g} is not a number of seconds above 0")


@contextmanager
def quiet_queue_log(verbosity: int) -> Iterator[None]:
    """django-q2 logs one INFO line per enqueued task: a thousand lines for a thousand deploys."""
    queue_logger = logging.getLogger("django-q")
    level = queue_logger.level
    if verbosity < 2:
        queue_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        queue_logger.setLevel(level)


def read_id_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise bad_arguments(f"--file: cannot read {path}: {exc.strerror or exc}") from exc
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [model_id for model_id in ids if model_id]
    if not ids:
        raise bad_arguments(f"--file: {path} names no model id")
    return ids


def follow_tasks(tasks: Sequence[Task], bar_stream: TextIO, timeout: float, poll: float) -> list[Task]:
    """Poll the tasks until all are finished or ``timeout`` passes, with a progress bar on ``bar_stream``."""
    latest = {task.pk: task for task in tasks}
    deadline = time.monotonic() + timeout
    with tqdm(
        total=len(tasks),
        file=bar_stream,
        unit="task",
        desc=f"{tasks[0].kind}s" if tasks else "tasks",
        dynamic_ncols=True,
    ) as bar:
        while True:
            unfinished = [pk for pk, task in latest.items() if task.status not in TERMINAL_STATUSES]
            for task in selectors.tasks_by_ids(unfinished):
                latest[task.pk] = task
            finished = sum(task.status in TERMINAL_STATUSES for task in latest.values())
            bar.set_postfix(Counter(task.status for task in latest.values()), refresh=False)
            bar.update(finished - bar.n)
            if finished == len(latest) or time.monotonic() >= deadline:
                break
            time.sleep(poll)
    return [latest[task.pk] for task in tasks]


def report_outcome(out: Any, tasks: Sequence[Task], started: float) -> None:
    """The summary table (every task if few, else those not done) and the totals; exit 1 unless all done."""
    not_done = [task for task in tasks if task.status != TaskStatus.DONE]
    shown = tasks if len(tasks) <= 50 else not_done
    if shown:
        rows = [(task.pk, task.embedding_model_id, task.status, took(task), task.detail) for task in shown]
        out.write(format_table(["task", "model", "status", "took", "detail"], rows))
    counts = Counter(task.status for task in tasks)
    totals = ", ".join(f"{status} {counts[status]}" for status in TaskStatus.values if counts[status])
    out.write(f"{len(tasks)} task(s) in {time.monotonic() - started:.1f}s: {totals}")
    if not_done:
        unfinished = sum(task.status not in TERMINAL_STATUSES for task in not_done)
        still = f" ({unfinished} still unfinished after --timeout)" if unfinished else ""
        message = f"{len(not_done)} of {len(tasks)} task(s) did not end done{still}"
        raise CommandError(message, returncode=TASKS_NOT_DONE)
