"""Configuration from the environment, read once into frozen dataclasses.

Each section names the variables it reads; :func:`load` reads them all. A
malformed value raises :class:`~worker.errors.ConfigError` naming the variable.
Credentials stay in these objects and never travel in job messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.units import MiB, TiB, parse_size

#: The shape of an Exoscale zone name: country, city, number (``ch-gva-2``, ``ch-dk-2``, as in
#: :data:`EXOSCALE_ZONES`). Any name of this shape is accepted, so a new zone needs no release of
#: ours: whether it exists is the API's to say. The shape also keeps a zone name harmless in the
#: API's host name, in job store keys and in archive keys. Match it with ``fullmatch``.
ZONE_NAME = re.compile(r"[a-z]{2}-[a-z]{2,4}-[0-9]+")
#: Zones of the Exoscale API, as the official OpenAPI spec lists them: where "every zone" is
#: looked in (the inventory, a job found by snapshot id alone) and the zones the simulator serves.
EXOSCALE_ZONES = (
    "at-vie-1",
    "at-vie-2",
    "bg-sof-1",
    "ch-dk-2",
    "ch-gva-2",
    "de-fra-1",
    "de-muc-1",
    "hr-zag-1",
)
DEFAULT_ENDPOINT = "https://api-{zone}.exoscale.com/v2"
#: The largest object of the default store: SOS takes 4 TiB (AWS S3: 5 TiB).
DEFAULT_OBJECT_LIMIT = 4 * TiB
#: Lifetime of the presigned URL a template is registered from: 12 hours, long enough for
#: a slow registration; SigV4 allows 7 days at most.
DEFAULT_RESTORE_URL_TTL = 12 * 3600
MAX_RESTORE_URL_TTL = 7 * 24 * 3600

#: Dramatiq queue names; also safe inside Redis keys and RabbitMQ queue names.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

#: The shortest ``SNAPARCHIVE_LEASE_TTL``, in seconds. The transfer watch (jobs.steps) renews
#: the lease once a third of it has passed, on its next tick (PROGRESS_INTERVAL, 1 s), in a
#: round of job store calls that may take STORE_CALL_TIMEOUT (5 s), and gives the lease up
#: LEASE_MARGIN (1 s) before it expires: ttl / 3 + 1 + 5 <= ttl - 1 needs ttl >= 10.5.
#: Below it a slow store stops transfers; at 1 s every transfer stops as soon as it starts.
MIN_LEASE_TTL = 11
#: The default ``SNAPARCHIVE_LEASE_TTL``: a killed worker's transfer is taken over at most this
#: long after its last renewal (renewals come every third of it), and a live one rides out a job
#: store that does not answer for about two thirds of it (8-9 s) before it stops, to be safe
#: (README, "Recovery in seconds").
DEFAULT_LEASE_TTL = 15
#: The default ``SNAPARCHIVE_HEARTBEAT_TIMEOUT``: a worker process heartbeats on every broker
#: command, at least once a second (its consumers' idle poll), so 10 s is ten missed beats.
DEFAULT_HEARTBEAT_TIMEOUT = 10


def _size(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: not a whole number: {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


#: A host name in a scheme-qualified allowlist entry: DNS labels, or an IPv4 address.
_ENTRY_HOST = re.compile(r"^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")


def download_endpoint(entry: str) -> tuple[str, str, int] | None:
    """Split a scheme-qualified allowlist entry (``http://simulator:8080``) into scheme, host
    and port (the scheme's default when not given); ``None`` for a host pattern (``*.exo.io``).

    Such an entry names one host exactly (no wildcards) and allows that scheme on that
    port only: the way to allow plain http to a host that is not loopback (a simulator on a
    compose network).

    Raises:
      ValueError: The entry has a scheme but is not ``http://HOST[:PORT]`` or
        ``https://HOST[:PORT]`` (a path, user info, a wildcard, a bad port).
    """
    if "://" not in entry:
        return None
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        raise ValueError("a malformed host or port") from None
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("only http:// or https:// entries")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("user info")
    if parts.path not in ("", "/") or parts.query or parts.fragment or entry.endswith(("?", "#")):
        raise ValueError("a path")
    if ":" in host:  # an IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("a malformed host") from None
    elif not _ENTRY_HOST.match(host):
        raise ValueError("not one exact host")
    scheme = parts.scheme.lower()
    return scheme, host, port or (443 if scheme == "https" else 80)


def _port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port (1-65535), or ``None`` when the variable is unset or empty."""
    if not env.get(name):
        return None
    port = _int(env, name, 0)
    if port > 65535:
        raise ConfigError(f"{name}: a port number is at most 65535, got {port}")
    return port


def _host_patterns(env: Mapping[str, str]) -> tuple[str, ...]:
    """``SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS`` as entries: host patterns, or scheme-qualified
    entries (:func:`download_endpoint`). A value that names no host, or an entry that is
    neither, is refused (it would refuse every download)."""
    name = "SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"
    raw = env.get(name) or "*.exo.io"
    patterns = tuple(p.strip() for p in raw.split(","))
    patterns = tuple(p for p in patterns if p)
    if not patterns:
        raise ConfigError(f"{name}: no host pattern in {raw!r} (e.g. *.exo.io)")
    for pattern in patterns:
        if re.search(r"\s", pattern):
            raise ConfigError(f"{name}: {pattern!r} is not a host pattern: it holds spaces")
        try:
            endpoint = download_endpoint(pattern)
        except ValueError as exc:
            raise ConfigError(
                f"{name}: {pattern!r} is not a scheme://host[:port] entry ({exc}; e.g. "
                "http://simulator:8080)"
            ) from None
        if endpoint is None and ("/" in pattern or "@" in pattern):
            raise ConfigError(
                f"{name}: {pattern!r} is not a host pattern: hosts only, without path, user "
                "or spaces (e.g. *.exo.io, 127.0.0.1), or scheme://host[:port]"
            )
    return patterns


@dataclass(frozen=True)
class ExoscaleSettings:
    """Exoscale API access.

    Variables: ``EXOSCALE_API_KEY``, ``EXOSCALE_API_SECRET`` (required to call the API),
    ``EXOSCALE_API_ENDPOINT`` (default ``https://api-{zone}.exoscale.com/v2``; ``{zone}``
    is replaced by the zone of each call).
    """

    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    endpoint: str = DEFAULT_ENDPOINT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExoscaleSettings:
        return cls(
            key=env.get("EXOSCALE_API_KEY", ""),
            secret=env.get("EXOSCALE_API_SECRET", ""),
            endpoint=env.get("EXOSCALE_API_ENDPOINT") or DEFAULT_ENDPOINT,
        )

    def require_credentials(self) -> None:
        """Raise :class:`ConfigError` naming the first missing credential variable."""
        for name, value in (("EXOSCALE_API_KEY", self.key), ("EXOSCALE_API_SECRET", self.secret)):
            if not value:
                raise ConfigError(f"{name} is not set")

    @property
    def zoned(self) -> bool:
        """Whether the endpoint has ``{zone}`` in it; without, every zone's calls go to it."""
        return "{zone}" in self.endpoint

    def url(self, zone: str) -> str:
        """Return the API base URL (ending in ``/v2``) for ``zone``."""
        return self.endpoint.replace("{zone}", zone).rstrip("/")


@dataclass(frozen=True)
class S3Settings:
    """The S3-compatible archive store.

    Variables: ``SNAPARCHIVE_S3_ENDPOINT`` (default: AWS, or boto3's ``AWS_ENDPOINT_URL_S3``),
    ``SNAPARCHIVE_S3_BUCKET`` (required), ``SNAPARCHIVE_S3_PREFIX`` (default ``snaparchive/``),
    ``SNAPARCHIVE_S3_REGION`` (default ``AWS_REGION``, else boto3's chain:
    ``AWS_DEFAULT_REGION``, the profile's region), ``SNAPARCHIVE_S3_ADDRESSING_STYLE``
    (``path`` default, ``virtual`` or ``auto``), ``SNAPARCHIVE_OBJECT_LIMIT`` (the largest
    object the store holds, default ``4TiB`` as SOS; AWS S3 takes 5 TiB: a segmented archive
    bigger than it cannot be joined into one object for a restore as a template). Credentials
    come from boto3's usual chain
    (``AWS_ACCESS_KEY_ID``, ...).
    """

    endpoint: str | None = None
    bucket: str = ""
    prefix: str = "snaparchive/"
    region: str | None = None
    addressing_style: str = "path"
    object_limit: int = DEFAULT_OBJECT_LIMIT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        style = env.get("SNAPARCHIVE_S3_ADDRESSING_STYLE") or "path"
        if style not in ("path", "virtual", "auto"):
            raise ConfigError(
                f"SNAPARCHIVE_S3_ADDRESSING_STYLE: path, virtual or auto, not {style!r}"
            )
        prefix = env.get("SNAPARCHIVE_S3_PREFIX", "snaparchive/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(
            endpoint=env.get("SNAPARCHIVE_S3_ENDPOINT") or None,
            bucket=env.get("SNAPARCHIVE_S3_BUCKET", ""),
            prefix=prefix,
            # None: boto3's own chain; a fixed default here would override it.
            region=env.get("SNAPARCHIVE_S3_REGION") or env.get("AWS_REGION") or None,
            addressing_style=style,
            object_limit=_size(env, "SNAPARCHIVE_OBJECT_LIMIT", DEFAULT_OBJECT_LIMIT),
        )

    def require_bucket(self) -> None:
        """Raise :class:`ConfigError` when ``SNAPARCHIVE_S3_BUCKET`` is not set."""
        if not self.bucket:
            raise ConfigError("SNAPARCHIVE_S3_BUCKET is not set")


@dataclass(frozen=True)
class TransferSettings:
    """How the image moves from the presigned URL to the store.

    Variables: ``SNAPARCHIVE_SEGMENT_LIMIT`` (largest archive object, default ``1TiB``),
    ``SNAPARCHIVE_PART_SIZE`` (default: derived from the image size),
    ``SNAPARCHIVE_UPLOAD_CONCURRENCY`` (parts uploading at once, default 4),
    ``SNAPARCHIVE_MEMORY_LIMIT`` (bytes of part buffers at most, default ``256MiB``),
    ``SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS`` (comma-separated host patterns, default ``*.exo.io``;
    at least one, hosts only; or ``scheme://host[:port]`` entries, see
    :func:`download_endpoint`).
    """

    segment_limit: int = TiB
    part_size: int | None = None
    upload_concurrency: int = 4
    memory_limit: int = 256 * MiB
    allowed_download_hosts: tuple[str, ...] = ("*.exo.io",)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TransferSettings:
        # parts imports this module: the import waits until both are loaded.
        from worker.parts import plan_parts

        part = env.get("SNAPARCHIVE_PART_SIZE")
        settings = cls(
            segment_limit=_size(env, "SNAPARCHIVE_SEGMENT_LIMIT", TiB),
            part_size=_size(env, "SNAPARCHIVE_PART_SIZE", 0) if part else None,
            upload_concurrency=_int(env, "SNAPARCHIVE_UPLOAD_CONCURRENCY", 4),
            memory_limit=_size(env, "SNAPARCHIVE_MEMORY_LIMIT", 256 * MiB),
            allowed_download_hosts=_host_patterns(env),
        )
        # The rules of worker.parts, now rather than when a job has exported its snapshot.
        plan_parts(0, settings)
        return settings


@dataclass(frozen=True)
class Settings:
    """Everything snaparchive reads from the environment.

    Variables of its own: ``SNAPARCHIVE_BROKER_URL`` (``redis://...`` default
    ``redis://127.0.0.1:6379/0``, or ``amqp://...``), ``SNAPARCHIVE_REDIS_URL`` (the job
    store; default: the broker URL when it is Redis, else ``redis://127.0.0.1:6379/0``),
    ``SNAPARCHIVE_EXPORT_TIMEOUT`` (seconds to wait for an export, default 21600),
    ``SNAPARCHIVE_LEASE_TTL`` (seconds a silent worker keeps its transfer lease, default
    :data:`DEFAULT_LEASE_TTL`, at least :data:`MIN_LEASE_TTL`),
    ``SNAPARCHIVE_TRANSFER_SLICE`` (seconds one transfer message runs before it checkpoints and
    hands over to a fresh message, default 1200: below RabbitMQ's 30 min consumer_timeout),
    ``SNAPARCHIVE_HEARTBEAT_TIMEOUT`` (seconds after which a silent Redis-broker worker counts
    as dead and its messages go back to the queue, default :data:`DEFAULT_HEARTBEAT_TIMEOUT`),
    ``SNAPARCHIVE_QUEUE`` (the Dramatiq queue of every actor and the prefix of the job store's
    keys, default ``snaparchive``: separate environments can share one broker and one Redis),
    ``SNAPARCHIVE_METRICS_PORT`` (where ``worker`` serves Prometheus metrics; default none),
    ``SNAPARCHIVE_RESTORE_URL_TTL`` (seconds the presigned URL of a restore as a template
    lives, default 43200, at most 604800: SigV4's limit), ``SNAPARCHIVE_RESTORE_TIMEOUT``
    (seconds to wait for a template registration, default 7200).
    """

    exoscale: ExoscaleSettings = field(default_factory=ExoscaleSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str = "redis://127.0.0.1:6379/0"
    export_timeout: int = 6 * 3600
    lease_ttl: int = DEFAULT_LEASE_TTL
    transfer_slice: int = 1200
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    queue: str = "snaparchive"
    metrics_port: int | None = None
    restore_url_ttl: int = DEFAULT_RESTORE_URL_TTL
    restore_timeout: int = 2 * 3600


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    broker_url = env.get("SNAPARCHIVE_BROKER_URL") or "redis://127.0.0.1:6379/0"
    if not broker_url.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
        raise ConfigError("SNAPARCHIVE_BROKER_URL: expected redis://... or amqp://...")
    default_store = broker_url if broker_url.startswith("redis") else "redis://127.0.0.1:6379/0"
    queue = env.get("SNAPARCHIVE_QUEUE") or "snaparchive"
    if not _QUEUE_NAME.match(queue):
        raise ConfigError(f"SNAPARCHIVE_QUEUE: letters, digits, '.', '_', '-' only, not {queue!r}")
    return Settings(
        exoscale=ExoscaleSettings.from_env(env),
        s3=S3Settings.from_env(env),
        transfer=TransferSettings.from_env(env),
        broker_url=broker_url,
        redis_url=env.get("SNAPARCHIVE_REDIS_URL") or default_store,
        export_timeout=_int(env, "SNAPARCHIVE_EXPORT_TIMEOUT", 6 * 3600),
        lease_ttl=_int(env, "SNAPARCHIVE_LEASE_TTL", DEFAULT_LEASE_TTL, minimum=MIN_LEASE_TTL),
        transfer_slice=_int(env, "SNAPARCHIVE_TRANSFER_SLICE", 1200),
        heartbeat_timeout=_int(env, "SNAPARCHIVE_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT),
        queue=queue,
        metrics_port=_port(env, "SNAPARCHIVE_METRICS_PORT"),
        restore_url_ttl=_restore_url_ttl(env),
        restore_timeout=_int(env, "SNAPARCHIVE_RESTORE_TIMEOUT", 2 * 3600),
    )


def _restore_url_ttl(env: Mapping[str, str]) -> int:
    name = "SNAPARCHIVE_RESTORE_URL_TTL"
    ttl = _int(env, name, DEFAULT_RESTORE_URL_TTL)
    if ttl > MAX_RESTORE_URL_TTL:
        raise ConfigError(f"{name}: at most {MAX_RESTORE_URL_TTL} (7 days, SigV4's limit)")
    return ttl
