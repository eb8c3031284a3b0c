"""Task ids become strings a client may choose (any safe string up to 128 characters, e.g. "1234").

Every existing task keeps its UUID as its string form ("3f1c9a5e-8a47-..."), the form the API has
always answered with, so ids clients already hold keep working. The foreign keys that point at
tasks (``Task.retry_of``, ``TaskEvent.task``) and the lease's ``task_id`` follow:
- PostgreSQL stores UUIDs natively; changing the column type casts each one to that string form,
  and Django drops and re-creates the foreign keys around the change;
- SQLite stored them as 32 hex digits without dashes; the dashes are put in afterwards, in every
  column that holds a task id.
Going back works while every task id is still a UUID, and says which ids are in the way otherwise.
"""

from django.db import migrations, models
from django.db.models import Value
from django.db.models.functions import Concat, Length, Lower, Replace, StrIndex, Substr

import deployments.models
import deployments.task_ids

UUID_STRING = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _columns_holding_task_ids(apps):
    """(model, field) pairs whose values are task ids."""
    task = apps.get_model("deployments", "Task")
    event = apps.get_model("deployments", "TaskEvent")
    lease = apps.get_model("deployments", "ModelLease")
    return [(task, "id"), (task, "retry_of_id"), (event, "task_id"), (lease, "task_id")]


def _with_dashes(column):
    return Concat(
        Substr(column, 1, 8),
        Value("-"),
        Substr(column, 9, 4),
        Value("-"),
        Substr(column, 13, 4),
        Value("-"),
        Substr(column, 17, 4),
        Value("-"),
        Substr(column, 21, 12),
        output_field=models.CharField(),
    )


def uuids_as_strings(apps, schema_editor):
    if schema_editor.connection.features.has_native_uuid_field:
        return  # the type change already wrote the string form
    for model, column in _columns_holding_task_ids(apps):
        # Annotations, not lookups: a foreign key's column takes no string lookups.
        dashless_hex = model.objects.annotate(length=Length(column), dash=StrIndex(column, Value("-")))
        dashless_hex.filter(length=32, dash=0).update(**{column: _with_dashes(column)})


def strings_as_uuids(apps, schema_editor):
    task = apps.get_model("deployments", "Task")
    chosen = list(task.objects.exclude(id__regex=UUID_STRING).values_list("id", flat=True)[:6])
    if chosen:
        shown = ", ".join(repr(task_id) for task_id in chosen[:5])
        raise RuntimeError(
            f"cannot make task ids UUIDs again: tasks with ids that are not UUIDs exist ({shown}"
            f"{', ...' if len(chosen) > 5 else ''}); delete or rename them first"
        )
    if schema_editor.connection.features.has_native_uuid_field:
        return  # the type change casts the strings back
    for model, column in _columns_holding_task_ids(apps):
        with_dashes = model.objects.annotate(dash=StrIndex(column, Value("-")))
        with_dashes.filter(dash__gt=0).update(**{column: Lower(Replace(column, Value("-"), Value("")))})


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0006_task_kind_status_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="task",
            name="id",
            field=models.CharField(
                default=deployments.task_ids.new_task_id,
                editable=False,
                max_length=128,
                primary_key=True,
                serialize=False,
                validators=[deployments.models.validate_safe_task_id],
            ),
        ),
        migrations.AlterField(
            model_name="modellease",
            name="task_id",
            field=models.CharField(
                blank=True, help_text="The task the holder runs; empty for other work.", max_length=128, null=True
            ),
        ),
        migrations.RunPython(uuids_as_strings, strings_as_uuids),
    ]
