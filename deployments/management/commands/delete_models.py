from deployments.management.commands._operators import TaskSubmissionCommand
from deployments.models import TaskKind


class Command(TaskSubmissionCommand):
    help = (
        "Delete many embedding models from the inference server: one deletion task per model, created in one "
        "batch, exactly like POST /delete. The models stay registered. Pick models by id, --file, --all or "
        "--state. Bad arguments exit 2 and create nothing; with --wait, exit 1 unless every task ends done. "
        "Example: manage.py delete_models --file retired.txt --wait"
    )
    kind = TaskKind.DELETION
    verb = "delete"
