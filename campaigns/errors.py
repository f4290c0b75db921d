"""One error tree for the whole project.

The CLI maps `CampaignError` to exit code 1 with its one-line message; the web app maps
the webhook errors to 4xx answers. Context lives in attributes, not only in the text.
"""

from __future__ import annotations


class CampaignError(Exception):
    """Base of every error this project raises on purpose."""


def first_line(exc: BaseException) -> str:
    """Another library's error, for a one-line message: its class and the first line of
    its text (drivers add hints and links on further lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


class ConfigError(CampaignError):
    """One or more settings are invalid; `problems` lists each of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


class SchemaError(CampaignError):
    """The database schema is missing or behind the code's migrations."""


class InputFileError(CampaignError):
    """A file given by the user cannot be read as asked (missing, empty, wrong format...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NotFoundError(CampaignError):
    """A named object (list, campaign, ...) does not exist."""


class StateError(CampaignError):
    """An illegal transition, e.g. starting a cancelled campaign."""


class DefinitionError(CampaignError):
    """A campaign file is invalid; `problems` holds every `(field path, why)` at once."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        listed = "; ".join(f"{path}: {why}" for path, why in problems)
        super().__init__(f"{source}: {len(problems)} problem(s): {listed}")


class EnablexError(CampaignError):
    """Base of the errors raised when talking to EnableX."""


class TransientEnablexError(EnablexError):
    """Timeout, connection error, 429 or 5xx: worth retrying later.

    `retry_after` is the provider's `Retry-After` in seconds when it gave one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(message)


class OutcomeUnknownError(TransientEnablexError):
    """A request that creates calls (POST /broadcast, POST /call) may have reached EnableX.

    Raised when the request was sent but no answer came back (read/write timeout, connection
    dropped mid-request) or a gateway answered 502/504. The broadcast MAY exist: the caller
    must not resubmit blindly (it would call people twice) but reconcile first. Being a
    TransientEnablexError, it is still "not a permanent rejection".
    """


class EnablexRejection(EnablexError):
    """A permanent 4xx answer: never retried. Carries the provider's status and message."""

    def __init__(self, message: str, *, status_code: int, error_code: str | None = None) -> None:
        self.status_code = status_code
        self.error_code = error_code
        super().__init__(f"EnableX rejected the request (HTTP {status_code}): {message}")


class BroadcastOutcomeUnknown(EnablexError):
    """EnableX answered 2xx to a create request but the answer is unreadable or has no id.

    The broadcast (or call) MAY exist: never resubmit blindly; mark the batch unknown and
    reconcile. Not transient: retrying the same request cannot make the first one readable.
    """


class WebhookDecodeError(CampaignError):
    """A webhook body that cannot be decrypted or parsed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
