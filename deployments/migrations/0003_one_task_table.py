"""One task table with a ``kind`` column; deployment and deletion tasks become proxies of it.

Every existing task keeps its id, status, sequence, attempt, ``retry_of`` link, times and
timeline: rows are copied inside the database (INSERT ... SELECT), so a million tasks move in
seconds. Timeline events point at the one table instead of one of two nullable foreign keys.
The capacity lock moves out of the ``~capacity`` sentinel lease row into a table of its own.
Reversible: going back copies each kind into its own table again.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models

TASK_COLUMNS = (
    "id, embedding_model_id, status, detail, metadata, config, sequence, attempt, retry_of_id, requested_by, "
    "lease_owner, dispatched_at, started_at, finished_at, created_at, updated_at"
)
OLD_TABLES = {"deployment": "deployments_deploymenttask", "deletion": "deployments_deletiontask"}
OLD_EVENT_COLUMNS = {"deployment": "deployment_task_id", "deletion": "deletion_task_id"}


def into_one_table(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for kind, table in OLD_TABLES.items():
            cursor.execute(
                f"INSERT INTO deployments_task (kind, {TASK_COLUMNS}) SELECT %s, {TASK_COLUMNS} FROM {table}", [kind]
            )
        cursor.execute("UPDATE deployments_taskevent SET task_id = COALESCE(deployment_task_id, deletion_task_id)")


def into_two_tables(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for kind, table in OLD_TABLES.items():
            cursor.execute(
                f"INSERT INTO {table} ({TASK_COLUMNS}) SELECT {TASK_COLUMNS} FROM deployments_task WHERE kind = %s",
                [kind],
            )
            cursor.execute(
                f"UPDATE deployments_taskevent SET {OLD_EVENT_COLUMNS[kind]} = task_id "
                "WHERE task_id IN (SELECT id FROM deployments_task WHERE kind = %s)",
                [kind],
            )


def drop_capacity_sentinel(apps, schema_editor):
    apps.get_model("deployments", "ModelLease").objects.filter(pk="~capacity").delete()


def create_capacity_lock(apps, schema_editor):
    apps.get_model("deployments", "CapacityLock").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0002_task_status_created_index"),
    ]

    operations = [
        # Removed first so that, going back, it is added again only after the rows are filled in.
        migrations.RemoveConstraint(model_name="taskevent", name="taskevent_exactly_one_task"),
        migrations.CreateModel(
            name="Task",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("kind", models.CharField(choices=[("deployment", "Deployment"), ("deletion", "Deletion")], max_length=16)),
                ("embedding_model_id", models.CharField(max_length=128)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("processing", "Processing"),
                            ("done", "Done"),
                            ("failed", "Failed"),
                            ("refused", "Refused"),
                            ("canceled", "Canceled"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("detail", models.TextField(blank=True)),
                ("metadata", models.JSONField(blank=True, default=dict)),
                ("config", models.JSONField(blank=True, default=dict)),
                ("sequence", models.BigIntegerField()),
                ("attempt", models.PositiveIntegerField(default=1)),
                ("requested_by", models.CharField(blank=True, max_length=150)),
                (
                    "lease_owner",
                    models.CharField(blank=True, help_text="The worker that runs (or ran) the task.", max_length=200),
                ),
                (
                    "dispatched_at",
                    models.DateTimeField(blank=True, help_text="Last hand-off to the queue.", null=True),
                ),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "retry_of",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="retries",
                        to="deployments.task",
                    ),
                ),
            ],
            options={"ordering": ["-created_at"]},
        ),
        migrations.AddField(
            model_name="taskevent",
            name="task",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="events", to="deployments.task"
            ),
        ),
        migrations.AddField(
            model_name="taskevent",
            name="actor",
            field=models.CharField(
                blank=True, help_text="Who made the change: a user, a worker, the sweeper.", max_length=200
            ),
        ),
        migrations.RunPython(into_one_table, into_two_tables),
        migrations.RemoveField(model_name="taskevent", name="deployment_task"),
        migrations.RemoveField(model_name="taskevent", name="deletion_task"),
        migrations.AlterField(
            model_name="taskevent",
            name="task",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="events", to="deployments.task"
            ),
        ),
        migrations.DeleteModel(name="DeploymentTask"),
        migrations.DeleteModel(name="DeletionTask"),
        migrations.CreateModel(
            name="DeploymentTask",
            fields=[],
            options={"proxy": True, "indexes": [], "constraints": []},
            bases=("deployments.task",),
        ),
        migrations.CreateModel(
            name="DeletionTask",
            fields=[],
            options={"proxy": True, "indexes": [], "constraints": []},
            bases=("deployments.task",),
        ),
        # Indexes after the copy: building them once is cheaper than maintaining them row by row.
        migrations.AddIndex(
            model_name="task",
            index=models.Index(fields=["embedding_model_id", "kind", "sequence", "attempt"], name="task_model_kind_seq"),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(fields=["embedding_model_id", "status", "sequence", "attempt"], name="task_model_queue"),
        ),
        migrations.AddIndex(
            model_name="task", index=models.Index(fields=["kind", "-created_at"], name="task_kind_created")
        ),
        migrations.AddIndex(model_name="task", index=models.Index(fields=["-created_at"], name="task_created")),
        migrations.AddIndex(
            model_name="task", index=models.Index(fields=["status", "-created_at"], name="task_status_created")
        ),
        migrations.AddConstraint(
            model_name="task",
            constraint=models.CheckConstraint(
                condition=models.Q(("kind__in", ["deployment", "deletion"])), name="task_kind_known"
            ),
        ),
        # The lease names its task by id alone: ids are unique in the one table.
        migrations.RemoveField(model_name="modellease", name="task_kind"),
        migrations.AlterField(
            model_name="modellease",
            name="task_id",
            field=models.UUIDField(blank=True, help_text="The task the holder runs; empty for other work.", null=True),
        ),
        migrations.RunPython(drop_capacity_sentinel, migrations.RunPython.noop),
        migrations.CreateModel(
            name="CapacityLock",
            fields=[("id", models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False))],
            options={
                "constraints": [models.CheckConstraint(condition=models.Q(("id", 1)), name="capacity_lock_single_row")]
            },
        ),
        migrations.RunPython(create_capacity_lock, migrations.RunPython.noop),
    ]
