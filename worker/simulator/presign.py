"""Presigned download URLs, shaped like the SigV4 query strings of Exoscale SOS.

A URL is ``{base}/sos/{zone}/exports/{export-id}/{snapshot-id}?X-Amz-Algorithm=...&
X-Amz-Credential=...&X-Amz-Date=...&X-Amz-Expires=...&X-Amz-SignedHeaders=host&
X-Amz-Signature=...``. The signature is an HMAC-SHA256 of the path and the other parameters
under a key that only this simulator knows, so a URL can be checked but not forged, and
``X-Amz-Date`` plus ``X-Amz-Expires`` bound its life like S3's. The signature is never logged.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from urllib.parse import urlencode

_ALGORITHM = "AWS4-HMAC-SHA256"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_SIGNED = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires")


class PresignError(Exception):
    """A presigned URL that does not hold.

    Parameters:
      code: The S3 error code (``AccessDenied`` or ``SignatureDoesNotMatch``).
      message: The S3 error message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def export_path(zone: str, export_id: str, snapshot_id: str) -> str:
    """Return the URL path of an exported snapshot's disk file."""
    return f"/sos/{zone}/exports/{export_id}/{snapshot_id}"


class Presigner:
    """Signs and checks presigned URLs.

    Parameters:
      key: The HMAC key (default: 32 random bytes, so URLs die with the simulator).
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = os.urandom(32) if key is None else key

    def _signature(self, path: str, params: Mapping[str, str]) -> str:
        message = "\n".join([path, *(f"{name}={params.get(name, '')}" for name in _SIGNED)])
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def url(
        self, base: str, zone: str, export_id: str, snapshot_id: str, now: float, ttl: float
    ) -> str:
        """Return a URL for the file, valid from ``now`` for ``ttl`` seconds.

        Parameters:
          base: Scheme and authority, like ``http://127.0.0.1:8080``.
          zone, export_id, snapshot_id: Identify the file.
          now: The current UNIX time.
          ttl: Lifetime in seconds (rounded down to whole seconds, as in S3).
        """
        path = export_path(zone, export_id, snapshot_id)
        date = time.strftime(_DATE_FORMAT, time.gmtime(now))
        params = {
            "X-Amz-Algorithm": _ALGORITHM,
            "X-Amz-Credential": f"simulator/{date[:8]}/{zone}/s3/aws4_request",
            "X-Amz-Date": date,
            "X-Amz-Expires": str(int(ttl)),
            "X-Amz-SignedHeaders": "host",
        }
        params["X-Amz-Signature"] = self._signature(path, params)
        return f"{base}{path}?{urlencode(params)}"

    def check(self, path: str, params: Mapping[str, str], now: float) -> None:
        """Check a request's path and query parameters at time ``now``.

        Raises:
          PresignError: ``AccessDenied`` when parameters are missing or the URL has expired,
            ``SignatureDoesNotMatch`` when the signature is wrong.
        """
        if any(name not in params for name in (*_SIGNED, "X-Amz-Signature")):
            raise PresignError(
                "AccessDenied", "Query-string authentication requires the X-Amz parameters"
            )
        expected = self._signature(path, params)
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            raise PresignError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        # The signature covers date and lifetime, so these parse unless we wrote them wrong.
        signed_at = calendar.timegm(time.strptime(params["X-Amz-Date"], _DATE_FORMAT))
        if now > signed_at + int(params["X-Amz-Expires"]):
            raise PresignError("AccessDenied", "Request has expired")
