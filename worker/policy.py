"""Backup policies: the TOML file of issue 11, read with ``tomllib`` and checked whole.

One file holds ``[[policy]]`` tables::

    [[policy]]
    name = "web"                  # [a-z0-9][a-z0-9-]*, unique in the file
    zone = "ch-gva-2"             # any well-formed zone name; the API says if it exists
    instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]   # instance ids, and/or
    labels = { backup = "nightly" }                        # instances whose labels include these
    schedule = "0 3 * * *"        # cron, 5 fields, UTC
    snapshots_keep = 2            # the policy's snapshots that stay in the cloud once archived
    verify = "0 4 * * 0"          # optional (issue 14): when to scrub the archives, cron
    verify_subset = "1/4"         # optional, needs verify: a quarter of them at each run

    [policy.keep]                 # archive retention (restic's forget): at least one rule
    last = 3                      # also hourly, daily, weekly, monthly, yearly: whole numbers >= 0
    within = "30d"                # years, months, days, hours: 1y2m3d4h; see worker.duration

Unknown keys are errors, at every level: a typo must not silently switch retention
off. Every error is a :class:`~worker.errors.PolicyError`, one line naming the file,
the policy and the key: ``snaparchive.toml: policy "web": keep.daily: must be a whole
number >= 0, got -1``. The first error found is reported.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.duration import Duration
from worker.errors import PolicyError
from worker.retention import KEEP_KEYS, KeepRules
from worker.schedule import check_cron, runs_after
from worker.settings import ZONE_NAME

__all__ = ["Duration", "KeepRules", "Policy", "PolicyFile", "load", "loads", "policies_path"]

ENV_VARIABLE = "SNAPARCHIVE_POLICIES"
DEFAULT_FILE = "snaparchive.toml"

NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
ZONE = ZONE_NAME
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_SUBSET = re.compile(r"([0-9]+)/([0-9]+)")
_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")

POLICY_KEYS = (
    "name", "zone", "instances", "labels", "schedule", "snapshots_keep", "keep",
    "verify", "verify_subset",
)  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """One ``[[policy]]``: which instances, when, and what to keep.

    ``instances`` are lower-case instance ids; ``labels`` are ``(key, value)`` pairs,
    sorted (:attr:`label_map` gives a dict). ``verify_subset`` is ``(N, T)``.
    """

    name: str
    zone: str
    schedule: str
    snapshots_keep: int
    keep: KeepRules
    instances: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    verify: str | None = None
    verify_subset: tuple[int, int] | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def selects(self, instance_id: str, labels: Mapping[str, str]) -> bool:
        """Whether the instance (of this policy's zone) belongs to the policy: listed by id,
        or carrying every one of the policy's labels."""
        if instance_id.lower() in self.instances:
            return True
        return bool(self.labels) and all(labels.get(k) == v for k, v in self.labels)

    def next_runs(self, after: datetime, count: int = 3) -> list[datetime]:
        """The next ``count`` (default 3) scheduled times strictly after the timezone-aware
        ``after``, as UTC datetimes."""
        return runs_after(self.schedule, after, count)


@dataclass(frozen=True)
class PolicyFile:
    """The policies of one file, in file order. ``path`` is the file as named."""

    path: str
    policies: tuple[Policy, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)

    def get(self, name: str) -> Policy:
        """The policy called ``name``; :class:`PolicyError` listing the names if none is."""
        for policy in self.policies:
            if policy.name == name:
                return policy
        known = ", ".join(self.names)
        raise PolicyError(self.path, f"no policy named {_show(name)} (policies: {known})")


def policies_path(env: Mapping[str, str], cli_value: str | None = None) -> Path:
    """Where the policy file is: ``cli_value`` (``--policies FILE``) when given, else
    ``SNAPARCHIVE_POLICIES`` when set and not empty, else ``snaparchive.toml`` in the
    working directory. Relative paths stay relative to the working directory.

    Raises:
      PolicyError: When ``--policies`` was given an empty string.
    """
    if cli_value is not None:
        if not cli_value:
            raise PolicyError("--policies", "needs a file name")
        return Path(cli_value)
    return Path(env.get(ENV_VARIABLE) or DEFAULT_FILE)


def load(path: str | Path) -> PolicyFile:
    """Read and check the policy file at ``path`` (see the module docstring).

    Raises:
      PolicyError: The file is missing, unreadable, not UTF-8, not TOML, or wrong.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(source, f"no such file (set {ENV_VARIABLE} or --policies)") from None
    except OSError as exc:
        raise PolicyError(source, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(source, f"not UTF-8 text (byte {exc.start})") from None
    return loads(text, source)


def loads(text: str, source: str = DEFAULT_FILE) -> PolicyFile:
    """Check the policy file's ``text``; ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.match(message)
        if match:
            what, line, column = match.groups()
            position = f"line {line}, column {column}"
            raise PolicyError(source, f"invalid TOML: {what}", key=position) from None
        raise PolicyError(source, f"invalid TOML: {message}") from None
    _no_unknown_keys(document, ("policy",), source, None, "")
    tables = document.get("policy")
    if tables is None:
        raise PolicyError(source, "no [[policy]] in the file")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise PolicyError(source, "must be an array of tables ([[policy]])", key="policy")
    policies: list[Policy] = []
    for index, table in enumerate(tables, start=1):
        policy = _Reader(source, index, table).policy()
        for earlier, other in enumerate(policies, start=1):
            if other.name == policy.name:
                problem = f"{_show(policy.name)} is the name of policy #{earlier} too"
                raise PolicyError(source, problem, f"#{index}", "name")
        policies.append(policy)
    return PolicyFile(source, tuple(policies))


class _Reader:
    """Checks one ``[[policy]]`` table; every failure names the policy and the key."""

    def __init__(self, source: str, index: int, table: dict[str, Any]) -> None:
        self.source = source
        self.table = table
        self.label = f"#{index}"

    def fail(self, key: str, problem: str) -> PolicyError:
        return PolicyError(self.source, problem, self.label, key)

    def policy(self) -> Policy:
        name = self.table.get("name")
        named = isinstance(name, str) and NAME.fullmatch(name) is not None
        if named:
            self.label = f'"{name}"'
        # Unknown keys first: a misspelt "name" is reported as such, not as missing.
        _no_unknown_keys(self.table, POLICY_KEYS, self.source, self.label, "")
        if not named or not isinstance(name, str):
            pattern = f"must match [a-z0-9][a-z0-9-]*, got {_show(name)}"
            raise self.fail("name", "missing" if name is None else pattern)
        zone = self.required("zone")
        if not isinstance(zone, str) or not ZONE.fullmatch(zone):
            raise self.fail("zone", f"must be a zone name like ch-gva-2, got {_show(zone)}")
        instances, labels = self.instances(), self.labels()
        if not instances and not labels:
            raise self.fail("instances", "missing: a policy needs instances, labels or both")
        verify = self.table.get("verify")
        verify = None if verify is None else self.cron("verify", verify)
        subset = self.subset()
        if subset is not None and verify is None:
            raise self.fail("verify_subset", "needs verify (the scrub's schedule)")
        return Policy(
            name=name,
            zone=zone,
            schedule=self.cron("schedule", self.required("schedule")),
            snapshots_keep=self.count("snapshots_keep", self.required("snapshots_keep")),
            keep=self.keep(),
            instances=instances,
            labels=labels,
            verify=verify,
            verify_subset=subset,
        )

    def required(self, key: str) -> Any:
        if key not in self.table:
            raise self.fail(key, "missing")
        return self.table[key]

    def count(self, key: str, value: Any) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(key, f"must be a whole number >= 0, got {_show(value)}")
        return value

    def cron(self, key: str, value: Any) -> str:
        try:
            check_cron(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        return value

    def instances(self) -> tuple[str, ...]:
        value = self.table.get("instances")
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            problem = f"must be a non-empty array of instance ids, got {_show(value)}"
            raise self.fail("instances", problem)
        ids: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _UUID.fullmatch(item):
                problem = f"must be an instance id (a UUID), got {_show(item)}"
                raise self.fail(f"instances[{i}]", problem)
            if item.lower() in ids:
                raise self.fail(f"instances[{i}]", f"{item} is listed twice")
            ids.append(item.lower())
        return tuple(ids)

    def labels(self) -> tuple[tuple[str, str], ...]:
        value = self.table.get("labels")
        if value is None:
            return ()
        if not isinstance(value, dict) or not value:
            # An empty table would select every instance of the zone.
            raise self.fail("labels", f"must be a table of at least one label, got {_show(value)}")
        for key, label in value.items():
            if not key:
                raise self.fail("labels", "a label name must not be empty")
            if not isinstance(label, str):
                raise self.fail(f"labels.{key}", f"must be a string, got {_show(label)}")
        return tuple(sorted(value.items()))

    def subset(self) -> tuple[int, int] | None:
        value = self.table.get("verify_subset")
        if value is None:
            return None
        match = _SUBSET.fullmatch(value) if isinstance(value, str) else None
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise self.fail("verify_subset", f'must be "N/T" with 1 <= N <= T, got {_show(value)}')
        return int(match[1]), int(match[2])

    def keep(self) -> KeepRules:
        table = self.required("keep")
        if not isinstance(table, dict):
            raise self.fail("keep", f"must be a table ([policy.keep]), got {_show(table)}")
        _no_unknown_keys(table, KEEP_KEYS, self.source, self.label, "keep.")
        if not table:
            raise self.fail("keep", f"needs at least one rule ({', '.join(KEEP_KEYS)})")
        counts = {k: self.count(f"keep.{k}", v) for k, v in table.items() if k != "within"}
        within = None
        if "within" in table:
            try:
                within = Duration.parse(table["within"])
            except ValueError as exc:
                raise self.fail("keep.within", str(exc)) from None
            if within.is_zero:
                problem = f"must be longer than 0, got {_show(table['within'])}"
                raise self.fail("keep.within", problem)
        return KeepRules(within=within, **counts)


def _no_unknown_keys(
    table: Mapping[str, Any], known: tuple[str, ...], source: str, policy: str | None, prefix: str
) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(known)})"
            raise PolicyError(source, "unknown key" + hint, policy, prefix + key)


def _show(value: Any) -> str:
    """A value as TOML would write it, short: for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)
