"""Exit statuses and error kinds: bad data is not a bad network."""

from __future__ import annotations

import pytest

from worker.errors import (
    AuthError,
    ChecksumMismatch,
    ConfigError,
    ServerError,
    ShortRead,
    StoreError,
    StoreIntegrityError,
    error_kind,
    exit_status,
)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (ChecksumMismatch("a" * 32, "b" * 32), 3, "verification"),
        (StoreIntegrityError("the store keeps getting part 3 wrong"), 3, "verification"),
        (ShortRead("download failed after 8 attempts"), 1, "transient"),
        (StoreError("S3 UploadPart failed"), 1, "transient"),
        (ServerError("HTTP 503"), 1, "transient"),
        (AuthError("HTTP 403 even with a fresh URL"), 1, "permanent"),
        (RuntimeError("a bug"), 1, "transient"),
        (ConfigError("SNAPARCHIVE_S3_BUCKET is not set"), 2, "permanent"),
    ],
)
def test_bad_data_is_not_a_bad_network(error, status, kind) -> None:
    assert exit_status(error) == status
    assert error_kind(error) == kind
