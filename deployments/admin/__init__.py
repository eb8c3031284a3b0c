"""The operators' control room in the Django admin.

- history:   the read-only task history (one list per kind) with retry / cancel actions and buttons
- registry:  the embedding models with deploy / delete actions and buttons, and each model's tasks
- leases:    the engine's per-model leases, to look at (models' rows only)
- engine:    the supervised worker clusters and their starts, restarts and stops
- audit:     who created, canceled or retried tasks and changed the registry, via what
- tokens:    the API tokens (hashed), their expiry; deleting one revokes it
- filters:   list filters and the paginator that keep a million-row history fast
- display:   badges, links, durations, revisions, the stage timeline and the metadata summary
- confirm:   the confirmation page of a task's and a model's own buttons (retry, cancel, deploy, delete)
- forms:     the config keys of a deploy or a retry, drawn from task_config and checked by its rules
- dashboard: what the admin index shows first (rendered by the ``control_room`` template tag)

Thin, like the API: every action calls the same services the API calls, every list reads
through selectors or the dashboard's own queries.
"""

from django.contrib import admin
from django_q.models import Failure, OrmQ, Schedule, Success

from deployments.admin import audit, engine, history, leases, registry, tokens

# The product's name (the README's title) on every page, not "Django administration".
admin.site.site_header = "Embedding deployments"
admin.site.site_title = "Embedding deployments"
admin.site.index_title = "Control room"

# The history's columns need the page's width more than a second copy of the index's app list does.
admin.site.enable_nav_sidebar = False

# django-q2's own pages are the queue's bookkeeping, not the deployments': its "Failed tasks" stays at 0
# while deployments fail (a task records its own failure and ends normally), its results and queued
# messages hold nothing but task ids, and its one schedule (the sweeper) is made by code on every
# migrate. Operators read the task lists instead. (django_q is installed before deployments, so its
# admin is registered by the time this runs.)
for queue_model in (Failure, Success, Schedule, OrmQ):
    if admin.site.is_registered(queue_model):
        admin.site.unregister(queue_model)

__all__ = ["audit", "engine", "history", "leases", "registry", "tokens"]
