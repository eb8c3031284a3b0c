from rest_framework.permissions import SAFE_METHODS, DjangoModelPermissions

METHOD_VERBS = {"POST": "add", "PUT": "change", "PATCH": "change", "DELETE": "delete"}


class ReadAuthenticatedWriteWithModelPermission(DjangoModelPermissions):
    """Reads need a logged-in user; writes need the model permission (``deployments.add_deploymenttask``...).

    A view may name the verb per action in ``permission_verbs`` (e.g. cancel needs ``change``).
    Anonymous requests are refused before anything else, which DRF answers with 401.
    """

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        queryset = self._queryset(view)
        verb = getattr(view, "permission_verbs", {}).get(getattr(view, "action", None)) or METHOD_VERBS.get(
            request.method
        )
        if verb is None:
            return False
        meta = queryset.model._meta
        return user.has_perm(f"{meta.app_label}.{verb}_{meta.model_name}")
