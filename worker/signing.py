"""EXO2-HMAC-SHA256 request signatures, as the Exoscale API v2 checks them.

The signed message is five lines: ``METHOD path``, the body, the values of the
single-valued query parameters sorted by name, the signed headers (always empty)
and the ``expires`` timestamp. Both the client and the simulator use this module,
and the tests hold it to the vendor's ``requests-exoscale-auth``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable

#: Lifetime of a signature, as the official clients use it.
SIGNATURE_LIFETIME = 600

_HEADER = re.compile(r"^EXO2-HMAC-SHA256 (?P<params>.+)$")


def string_to_sign(
    method: str,
    path: str,
    body: bytes,
    query: Iterable[tuple[str, str]],
    expires: int,
) -> tuple[bytes, list[str]]:
    """Return the message to sign and the names of the signed query parameters.

    Parameters:
      method: The HTTP method, upper case.
      path: The percent-encoded path as sent, including ``/v2``, without the query.
      body: The body bytes exactly as sent (``b""`` for none).
      query: The query parameters as (name, value) pairs, decoded.
      expires: Absolute UNIX time after which the signature is void.
    """
    values: dict[str, list[str]] = {}
    for name, value in query:
        values.setdefault(name, []).append(value)
    names = sorted(values)
    # Like requests-exoscale-auth: a parameter given several times is named but its values are
    # not signed. Our client never sends one.
    signed_values = "".join(values[n][0] for n in names if len(values[n]) == 1)
    message = b"\n".join(
        [
            f"{method.upper()} {path}".encode(),
            body,
            signed_values.encode(),
            b"",
            str(expires).encode(),
        ]
    )
    return message, names


def signature(secret: str, message: bytes) -> str:
    """Return the base64 HMAC-SHA256 of ``message`` under ``secret``."""
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def authorization(
    key: str,
    secret: str,
    method: str,
    path: str,
    body: bytes = b"",
    query: Iterable[tuple[str, str]] = (),
    expires: int | None = None,
) -> str:
    """Return the ``Authorization`` header value for one request.

    Parameters:
      key, secret: The API key and secret.
      method, path, body, query: The request, as in :func:`string_to_sign`.
      expires: UNIX time the signature expires; defaults to now + :data:`SIGNATURE_LIFETIME`.
    """
    if expires is None:
        expires = int(time.time()) + SIGNATURE_LIFETIME
    message, names = string_to_sign(method, path, body, query, expires)
    header = f"EXO2-HMAC-SHA256 credential={key}"
    if names:
        header += f",signed-query-args={';'.join(names)}"
    return header + f",expires={expires},signature={signature(secret, message)}"


class SignatureError(ValueError):
    """An Authorization header that is missing, malformed, expired or wrong."""


def parse_authorization(header: str) -> dict[str, str]:
    """Split an EXO2-HMAC-SHA256 header into its parameters.

    Raises:
      SignatureError: When the header is not of that form.
    """
    match = _HEADER.match(header or "")
    if not match:
        raise SignatureError("missing or malformed EXO2-HMAC-SHA256 Authorization header")
    params: dict[str, str] = {}
    for part in match.group("params").split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise SignatureError("malformed EXO2-HMAC-SHA256 Authorization header")
        params[name.strip()] = value.strip()
    for required in ("credential", "expires", "signature"):
        if required not in params:
            raise SignatureError(f"Authorization header lacks {required}")
    return params


def verify(
    header: str,
    secrets: dict[str, str],
    method: str,
    path: str,
    body: bytes,
    query: Iterable[tuple[str, str]],
    now: float | None = None,
) -> str:
    """Check a request's signature and return the API key that signed it.

    Parameters:
      header: The request's ``Authorization`` header.
      secrets: Known API keys and their secrets.
      method, path, body, query: The request as received.
      now: The current UNIX time (defaults to the clock).

    Raises:
      SignatureError: With the reason, when the signature does not hold.
    """
    params = parse_authorization(header)
    key = params["credential"]
    if key not in secrets:
        raise SignatureError("unknown API key")
    try:
        expires = int(params["expires"])
    except ValueError as exc:
        raise SignatureError("malformed expires") from exc
    if expires < (time.time() if now is None else now):
        raise SignatureError("request expired")
    message, names = string_to_sign(method, path, body, query, expires)
    declared = params.get("signed-query-args", "")
    if declared != ";".join(names):
        raise SignatureError("signed-query-args do not match the query")
    if not hmac.compare_digest(signature(secrets[key], message), params["signature"]):
        raise SignatureError("Invalid request signature")
    return key
