from deployments.management.commands.reconcile import Command as ReconcileCommand


class Command(ReconcileCommand):
    help = (
        "Make the inference server serve every deployed model's live revision again (after it restarted, "
        "it serves nothing): one pass of `reconcile`. Models already served are left alone. "
        "Exit 1 if any model could not be restored."
    )
