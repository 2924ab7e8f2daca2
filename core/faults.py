"""The deploy pipeline's failure taxonomy.

Every failure that ends (or delays) a deployment is a `DeployError` with a stable `code` and a
`message` the tenant can act on. Messages are shown to tenants as they are: they never carry a
host path, a stack trace, a command line or a secret.

- `UserError`: the tenant's input is wrong (no `web:` process, a hostile archive, a broken
  `pyproject.toml`). Never retried; the deployment goes to `failed` with the code and message.
- `PlatformError`: something on our side failed. `transient=True` means trying again later may
  help (podman timed out, the disk was full), and the task retries it with backoff; a
  non-transient one fails the deployment with a generic message and pages nobody but the logs.
- `SourceRejected`: a `UserError` for archive refusals, carrying the HTTP status (413 or 422)
  the upload endpoint answers with when it refuses the archive up front.

The classes pickle with their attributes, so they survive a trip through Celery.
"""

from __future__ import annotations

from typing import Any
from typing import ClassVar


class InfrastructureError(Exception):
    """Base of every failure of a system the platform drives (podman, Caddy, PostgreSQL) and of
    the platform's own errors: `transient` says whether trying again later may succeed, and it
    is the only thing a task's retry decision looks at."""

    transient: bool = False


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, InfrastructureError) and bool(exc.transient)


class DeployError(Exception):
    """Base class: a failure with a stable code and a tenant-facing message."""

    user_error: ClassVar[bool] = False
    # Only a PlatformError can be transient; everything else fails the deployment at once.
    transient: bool = False

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message if message is not None else f"The deployment failed ({code})."
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message))

    def as_dict(self) -> dict[str, str]:
        """The `error` object stored on a deployment and returned by the API."""
        return {"code": self.code, "message": self.message}


class UserError(DeployError):
    """The tenant's input is at fault: never retried, the deployment is `failed`."""

    user_error = True


class PlatformError(DeployError, InfrastructureError):
    """The platform is at fault: retried with backoff when `transient`."""

    user_error = False

    def __init__(self, code: str, message: str | None = None, *, transient: bool = False) -> None:
        super().__init__(code, message)
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_platform_error, (type(self), self.code, self.message, self.transient))


class SourceRejected(UserError):
    """A source archive the platform refuses to unpack, with the HTTP status for the upload."""

    HTTP_STATUSES: ClassVar[frozenset[int]] = frozenset({413, 422})

    def __init__(self, code: str, message: str | None = None, *, http_status: int = 422) -> None:
        if http_status not in self.HTTP_STATUSES:
            raise ValueError(f"SourceRejected takes HTTP status 413 or 422, not {http_status}")
        super().__init__(code, message)
        self.http_status = http_status

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_source_rejected, (type(self), self.code, self.message, self.http_status))


def _rebuild_platform_error(cls: type[PlatformError], code: str, message: str, transient: bool) -> PlatformError:
    return cls(code, message, transient=transient)


def _rebuild_source_rejected(cls: type[SourceRejected], code: str, message: str, http_status: int) -> SourceRejected:
    return cls(code, message, http_status=http_status)
