"""Reading the JSON a cloud API answers: one way for every client and adapter.

:class:`Fields` reads one object of an answer; a field that is missing or of the wrong type
raises :class:`~worker.errors.BadResponse` with a one-line message naming the service, the
object and the field (``gcore: snapshot 3 of page 2 has 'size' of type a string``), so a
malformed answer is a clear error and not a ``KeyError`` deep inside a job. Values are never
quoted in these messages except where said: they may be long, or credentials.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.errors import BadResponse

#: The largest size believed, in bytes (8 EiB): more is a malformed answer, not a disk.
MAX_SIZE = (1 << 63) - 1


class Fields:
    """Reads one API object.

    Parameters:
      service: The service's name (``exoscale``, ``gcore``), first word of every error.
      data: The decoded JSON object.
      what: How to name the object in errors (``snapshot 3 of page 2``).

    Raises:
      BadResponse: When ``data`` is not a JSON object.
    """

    def __init__(self, service: str, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise BadResponse(f"{service}: {what} is {json_kind(data)}, not an object")
        self.service = service
        self.data: dict[str, Any] = data
        self.what = what

    def _fail(self, problem: str) -> BadResponse:
        return BadResponse(f"{self.service}: {self.what} {problem}")

    def required(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """Return field ``name``, which must be present and of type ``kind``."""
        if self.data.get(name) is None:
            raise self._fail(f"has no {name!r}")
        return self._typed(name, kind)

    def optional(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """Return field ``name`` or ``None`` when absent or null; a wrong type is an error."""
        if self.data.get(name) is None:
            return None
        return self._typed(name, kind)

    def lenient(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """Return field ``name`` when it is of type ``kind``, else ``None``: for a field a
        caller can do without, whose wrong type must not fail the call."""
        value = self.data.get(name)
        return value if _is(value, kind) else None

    def text(self, name: str) -> str:
        """Return field ``name``, which must be a non-empty string (an id, a region)."""
        value = self.required(name, str)
        if not value:
            raise self._fail(f"has an empty {name!r}")
        return value

    def size(self, name: str, unit: int = 1) -> int | None:
        """Return field ``name``, a whole number of ``unit`` bytes, as bytes (``None`` when
        absent or null). Negative sizes and sizes past :data:`MAX_SIZE` bytes are errors."""
        value = self.optional(name, int)
        if value is None:
            return None
        if value < 0:
            raise self._fail(f"has a negative {name!r}")
        if value * unit > MAX_SIZE:
            raise self._fail(f"has {name!r} out of range")
        return value * unit

    def timestamp(self, name: str) -> datetime | None:
        """Return field ``name`` as an ISO 8601 date-time (naive taken as UTC), or ``None``.
        The error quotes the text: a date is no secret."""
        text = self.optional(name, str)
        if not text:
            return None
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise self._fail(f"has {name!r} {text!r}, not an ISO 8601 date-time") from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def strings(self, name: str) -> tuple[str, ...]:
        """Return field ``name``, a list of strings (empty when absent or null)."""
        values = self.optional(name, list) or []
        if not all(isinstance(value, str) for value in values):
            raise self._fail(f"has {name!r} that is not a list of strings")
        return tuple(values)

    def labels(self, name: str = "labels") -> dict[str, str]:
        """Return field ``name``, a map of strings to strings (empty when absent or null)."""
        labels = self.optional(name, dict) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise self._fail(f"has {name!r} that are not a map of strings")
        return dict(labels)

    def child(self, name: str) -> Fields | None:
        """Return the object in field ``name`` to read in turn (``None`` when absent or null);
        its errors name it as ``what``'s ``name``."""
        value = self.optional(name, dict)
        return None if value is None else Fields(self.service, value, f"{self.what}'s {name!r}")

    def _typed(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = self.data[name]
        if not _is(value, kind):
            raise self._fail(f"has {name!r} of type {json_kind(value)}")
        return value


def _is(value: Any, expected: type | tuple[type, ...]) -> bool:
    # bool is an int in Python, but never a size, a count or an id in these APIs.
    if isinstance(value, bool) and expected is not bool:
        return isinstance(expected, tuple) and bool in expected
    return isinstance(value, expected)


def items_of(service: str, data: Any, key: str | None, what: str) -> list[Any]:
    """Return the list at ``data[key]`` (or ``data`` itself when ``key`` is ``None``).

    Raises:
      BadResponse: naming ``service`` and ``what`` when it is not a list.
    """
    found = data
    if key is not None:
        if not isinstance(data, dict):
            raise BadResponse(f"{service}: {what} is {json_kind(data)}, not an object")
        found = data.get(key)
    if not isinstance(found, list):
        where = f"{what}'s {key!r}" if key else what
        raise BadResponse(f"{service}: {where} is {json_kind(found)}, not a list")
    return found


def json_kind(value: Any) -> str:
    """Name the JSON type of ``value`` for an error: ``an object``, ``null``, ``a string``..."""
    if value is None:
        return "null"
    kinds = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
    }
    return kinds.get(type(value), f"a {type(value).__name__}")
