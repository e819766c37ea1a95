"""The errors snaparchive raises, named for what went wrong, and the exit status they mean.

Every error carries ``permanent``: a permanent error ends a job as failed,
a transient one is retried with backoff. ``verification`` marks bad data (an MD5 that
differs, a store that keeps corrupting what it is sent, a checksum refused): exit status 3,
which a scheduler pages on, where 1 (a failure) is worth a retry. Messages never contain
credentials or presigned URLs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.models import Quota


#: Exit statuses of every command.
EXIT_OK = 0
#: The work failed (transient or other): worth a retry once the cause is gone.
EXIT_FAILED = 1
#: Usage or configuration errors.
EXIT_USAGE = 2
#: Verification failed: the data is bad (not the network), nothing to retry blindly.
EXIT_VERIFICATION = 3
#: Interrupted (SIGINT).
EXIT_INTERRUPTED = 130


class SnaparchiveError(Exception):
    """Base of every error this package raises on purpose."""

    permanent = True
    #: The bytes failed a check (see the module docstring): exit status 3.
    verification = False


def is_permanent(error: BaseException) -> bool:
    """Whether ``error`` ends a job: our permanent errors do; foreign ones (a bug, or a
    library's error not yet wrapped) are retried like transient ones."""
    return isinstance(error, SnaparchiveError) and error.permanent


def is_verification_failure(error: BaseException) -> bool:
    """Whether ``error`` says the data is bad (exit status 3), not that a call failed."""
    return isinstance(error, SnaparchiveError) and error.verification


def error_kind(error: BaseException) -> str:
    """What a job record keeps of a failure's nature (its ``error_kind``): ``verification``
    (bad data: exit status 3), ``permanent`` (retrying cannot help) or ``transient`` (it
    failed after its retries; a later try may work)."""
    if is_verification_failure(error):
        return "verification"
    return "permanent" if is_permanent(error) else "transient"


def exit_status(error: BaseException) -> int:
    """The exit status of a command that ends with ``error``."""
    if isinstance(error, ConfigError):
        return EXIT_USAGE
    return EXIT_VERIFICATION if is_verification_failure(error) else EXIT_FAILED


def describe(error: BaseException) -> str:
    """One line for a record, a message or a log: our errors' own text, only the class
    name of a foreign one (its text may carry a URL or a header)."""
    if isinstance(error, SnaparchiveError):
        return str(error)
    return f"internal error ({type(error).__name__})"


class ConfigError(SnaparchiveError):
    """A setting is missing or malformed (the message names the variable)."""


class PolicyError(ConfigError):
    """The policy file is missing, unreadable or wrong.

    The message is one line: ``FILE: policy "NAME": KEY: PROBLEM`` (the policy as
    ``#N``, counted from 1, when its name is missing or bad; parts that do not apply
    are left out).

    Parameters:
      path: The file as the user named it.
      problem: What is wrong.
      policy: ``"web"`` or ``#2``, when the error is inside a policy.
      key: The key, dotted for nested ones (``keep.daily``, ``instances[1]``).
    """

    def __init__(
        self, path: str, problem: str, policy: str | None = None, key: str | None = None
    ) -> None:
        parts = [path]
        if policy is not None:
            parts.append(f"policy {policy}")
        if key is not None:
            parts.append(key)
        parts.append(problem)
        super().__init__(": ".join(parts))
        self.path = path
        self.problem = problem
        self.policy = policy
        self.key = key


# -- cloud APIs (Exoscale, Genesis Cloud, Gcore, InstaVM) ----------------------------------


class ApiError(SnaparchiveError):
    """A call to a cloud API failed.

    Parameters:
      message: The server's message, or a description of the failure.
      status: The HTTP status, when there was a response.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(ApiError):
    """HTTP 404: the snapshot, operation or other resource does not exist."""


class AuthError(ApiError):
    """HTTP 401/403: bad credentials, bad or expired signature, or forbidden."""


class Conflict(ApiError):
    """HTTP 409: the resource is busy with another operation."""

    permanent = False


class RateLimited(ApiError):
    """HTTP 429 after all retries.

    Parameters:
      retry_after: Seconds the server asked us to wait, if it said.
    """

    permanent = False

    def __init__(self, message: str, status: int | None = 429, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerError(ApiError):
    """HTTP 5xx, a connection failure or a timeout, after all retries."""

    permanent = False


class BadRequest(ApiError):
    """Any other HTTP 4xx: the request itself is wrong."""


class BadResponse(ApiError):
    """The server answered something that is not the documented shape."""

    permanent = False


class OperationFailed(ApiError):
    """An asynchronous operation ended in ``failure`` or ``timeout``.

    Parameters:
      operation_id: The operation's id.
      state: ``failure`` or ``timeout``.
      reason: The operation's ``reason`` (``busy``, ``conflict``, ``fault``, ...), if any.
    """

    def __init__(self, operation_id: str, state: str, reason: str | None, message: str = ""):
        detail = f"operation {operation_id} ended in {state}"
        if reason:
            detail += f" (reason: {reason})"
        if message:
            detail += f": {message}"
        super().__init__(detail)
        self.operation_id = operation_id
        self.state = state
        self.reason = reason


class ChecksumRefused(ApiError):
    """Exoscale refused a template registration because the image it read did not have the
    checksum it was given: a verification that failed (exit status 3). The message begins
    with :data:`CHECKSUM_REFUSED`.

    Parameters:
      operation_id: The registration's operation.
      message: What Exoscale said.
    """

    verification = True

    def __init__(self, operation_id: str, message: str) -> None:
        super().__init__(f"{CHECKSUM_REFUSED}: {message} (operation {operation_id})")
        self.operation_id = operation_id


#: How the message of a :class:`ChecksumRefused` begins.
CHECKSUM_REFUSED = "checksum refused by Exoscale"


class QuotaExceeded(ApiError):
    """A create call refused because the organisation's quota of that resource is used up.

    Permanent: retrying cannot help until something is deleted or the quota raised.

    Parameters:
      quota: The quota as read right after the refusal (None when it could not be read).
    """

    def __init__(self, message: str, quota: Quota | None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.quota = quota


class SnapshotNotExportable(ApiError):
    """The snapshot is in a state an export cannot start from (deleted, error, ...)."""


class OperationTimeout(ApiError):
    """Our own deadline for an operation passed while it was still pending."""


# -- transfer and archive -------------------------------------------------------------------


class TransferError(SnaparchiveError):
    """Moving the image from the export to the archive failed."""


class ChecksumMismatch(TransferError):
    """The streamed bytes do not hash to the published MD5."""

    verification = True

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"md5 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ShortRead(TransferError):
    """The download ended before Content-Length bytes arrived, and resuming failed."""

    permanent = False


class DownloadRefused(TransferError):
    """The presigned URL points at a host or scheme we do not download from."""


class StoreIntegrityError(TransferError):
    """The archive store holds bytes other than the ones we sent (ETag mismatch), or an
    archive is not what its manifest says (an object missing or of another size, a manifest
    that does not parse)."""

    verification = True


class ArchiveExists(TransferError):
    """A verified archive of this snapshot is already stored; it is not overwritten."""

    def __init__(self, manifest_key: str) -> None:
        super().__init__(f"a verified archive already exists: {manifest_key}")
        self.manifest_key = manifest_key


class StoreError(TransferError):
    """The archive store failed after all retries."""

    permanent = False


class ObjectExists(StoreError):
    """An object the transfer was about to create exists already (a write that must not
    replace anything was refused). Transient: the next try looks at why."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} exists already")
        self.key = key
