"""Errors raised by the serving layer. Each one says what happened in words an operator can act on."""


class InferenceError(Exception):
    """Base class for every error of the serving layer."""


class InvalidModelId(InferenceError, ValueError):
    """A model id that cannot safely become a server name or a directory name."""


class SourceRefused(InferenceError):
    """A model source that is missing, malformed, or outside the allowed roots."""


class SourceUnavailable(InferenceError):
    """A model source that exists, or may, but could not be reached now (a registry that did not answer):
    the same request can succeed later."""


class InvalidArtifacts(SourceRefused):
    """Artifacts that are not a whole model the runtime can load: a truncated safetensors file, a JSON
    config that does not parse, a file a sentence-transformers folder needs that is missing, a registry
    entry that holds something else. ``problems`` has one sentence per problem, naming the source and the
    file. Registering such a source is refused; a deploy that fetched it fails at ``fetch`` (not refused:
    once the source's files are fixed, the same request succeeds)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ChecksumMismatch(InferenceError):
    """A revision whose files do not match the manifest written when it was copied."""


class ServerUnavailable(InferenceError):
    """The inference server did not answer (down, refused the connection, or timed out)."""


class ModelNotFound(InferenceError):
    """The server has no model of that name (not in the repository, or not loaded)."""


class LoadFailed(InferenceError):
    """The server could not load a model; the message carries the server's own reason."""


class InferenceFailed(InferenceError):
    """An inference call was answered with an error."""


class DeployFailed(InferenceError):
    """A deploy or delete stopped at a stage; blue (if any) serves, as before the deploy.

    ``refused`` is True when the request itself was at fault (bad id, source outside the allowed
    roots): retrying it unchanged cannot succeed. ``metadata`` carries what the caller should keep
    (a rollback names both revisions and how long it took).
    """

    def __init__(self, stage: str, reason: str, refused: bool = False, metadata: dict | None = None):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.refused = refused
        self.metadata = metadata or {}


class FenceLost(Exception):
    """The caller's guard says this attempt no longer owns the model (its lease was taken over).

    Deliberately not an InferenceError: nothing catches it to clean up, because a superseded
    attempt must stop before its next side effect and change nothing, not even its own green.
    """
