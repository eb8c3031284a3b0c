"""What the task services refuse, as exceptions the API, the admin and the commands translate."""


class TaskError(Exception):
    """A request about tasks that cannot be honoured; the message says why."""


class ModelNotRegistered(TaskError):
    pass


class TaskConflict(TaskError):
    """The task exists but is in a state (or of a kind) that does not allow the request."""


class TransitionNotAllowed(TaskConflict):
    """A status change the task lifecycle forbids (e.g. anything out of a terminal status)."""


class TaskHandOffFailed(TaskError):
    """The task could not be handed to the queue; it was withdrawn, nothing is left behind."""
