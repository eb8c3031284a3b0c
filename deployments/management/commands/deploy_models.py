from deployments.management.commands._operators import TaskSubmissionCommand
from deployments.models import TaskKind


class Command(TaskSubmissionCommand):
    help = (
        "Deploy many embedding models: one deployment task per model, created in one batch and handed to the "
        "workers, exactly like POST /deploy. Pick models by id, --file, --all or --state. "
        "Bad arguments exit 2 and create nothing; with --wait, exit 1 unless every task ends done. "
        "Example: manage.py deploy_models --state not_deployed --config '{\"ready_timeout\": 120}' --wait"
    )
    kind = TaskKind.DEPLOYMENT
    verb = "deploy"
    config_help = 'Deployment config as JSON, as in the API: {"expected_dimensions": 384, "ready_timeout": 120}.'
