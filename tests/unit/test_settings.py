"""Settings from the environment: defaults, parsing, errors that name the variable."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import MIN_LEASE_TTL, download_endpoint, load
from worker.units import GiB, MiB, TiB, format_size, parse_size


def test_defaults() -> None:
    settings = load({})
    assert settings.exoscale.url("de-fra-1") == "https://api-de-fra-1.exoscale.com/v2"
    assert settings.s3.prefix == "snaparchive/" and settings.s3.addressing_style == "path"
    assert settings.transfer.segment_limit == TiB
    assert settings.transfer.allowed_download_hosts == ("*.exo.io",)
    assert settings.broker_url == settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue == "snaparchive"


def test_values_are_parsed() -> None:
    settings = load(
        {
            "EXOSCALE_API_ENDPOINT": "http://127.0.0.1:8080/{zone}/v2/",
            "SNAPARCHIVE_S3_PREFIX": "backups",
            "SNAPARCHIVE_SEGMENT_LIMIT": "2GiB",
            "SNAPARCHIVE_PART_SIZE": "16MiB",
            "SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS": "*.exo.io, 127.0.0.1 ,",
            "SNAPARCHIVE_BROKER_URL": "amqp://guest:guest@localhost:5672/",
            "SNAPARCHIVE_QUEUE": "staging-archive",
        }
    )
    assert settings.exoscale.url("at-vie-1") == "http://127.0.0.1:8080/at-vie-1/v2"
    assert settings.s3.prefix == "backups/"
    assert settings.transfer.segment_limit == 2 * GiB
    assert settings.transfer.part_size == 16 * MiB
    assert settings.transfer.allowed_download_hosts == ("*.exo.io", "127.0.0.1")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"  # the job store stays on Redis
    assert settings.queue == "staging-archive"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SNAPARCHIVE_SEGMENT_LIMIT": "lots"}, "SNAPARCHIVE_SEGMENT_LIMIT"),
        ({"SNAPARCHIVE_UPLOAD_CONCURRENCY": "0"}, "SNAPARCHIVE_UPLOAD_CONCURRENCY"),
        ({"SNAPARCHIVE_BROKER_URL": "kafka://x"}, "SNAPARCHIVE_BROKER_URL"),
        ({"SNAPARCHIVE_S3_ADDRESSING_STYLE": "sideways"}, "SNAPARCHIVE_S3_ADDRESSING_STYLE"),
        ({"SNAPARCHIVE_QUEUE": "a queue:with spaces"}, "SNAPARCHIVE_QUEUE"),
        # Out of the ranges of worker.parts: refused at load, not when a job plans its parts.
        ({"SNAPARCHIVE_PART_SIZE": "4MiB"}, "SNAPARCHIVE_PART_SIZE: must be within"),
        ({"SNAPARCHIVE_PART_SIZE": "0"}, "SNAPARCHIVE_PART_SIZE: must be within"),
        ({"SNAPARCHIVE_PART_SIZE": "5GiB"}, "SNAPARCHIVE_MEMORY_LIMIT: 256.0 MiB does not"),
        ({"SNAPARCHIVE_MEMORY_LIMIT": "1MiB"}, "SNAPARCHIVE_MEMORY_LIMIT: 1.0 MiB does not"),
        ({"SNAPARCHIVE_SEGMENT_LIMIT": "4MiB"}, "SNAPARCHIVE_SEGMENT_LIMIT: 4.0 MiB is below"),
        ({"SNAPARCHIVE_SEGMENT_LIMIT": "5.5TiB"}, "SNAPARCHIVE_SEGMENT_LIMIT: .* is above"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(env)


def test_missing_credentials_and_bucket_are_named() -> None:
    settings = load({"EXOSCALE_API_KEY": "EXO1"})
    with pytest.raises(ConfigError, match="EXOSCALE_API_SECRET is not set"):
        settings.exoscale.require_credentials()
    with pytest.raises(ConfigError, match="SNAPARCHIVE_S3_BUCKET is not set"):
        settings.s3.require_bucket()


def test_sizes() -> None:
    assert parse_size("64MiB") == 64 * MiB
    assert parse_size("1.5GiB") == 3 * GiB // 2
    assert parse_size("1000") == 1000
    assert format_size(3 * GiB // 2) == "1.5 GiB"
    with pytest.raises(ValueError, match="not a size"):
        parse_size("12 parsecs")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (",,,", "no host pattern"),
        (" , ", "no host pattern"),
        ("*.exo.io, sos.exo.io/bucket", "not a host pattern"),
        ("*.exo.io,user@sos.exo.io", "not a host pattern"),
        ("sos ch-gva-2.exo.io", "not a host pattern"),
        ("https://sos-ch-gva-2.exo.io/bucket", "not a scheme://host.*a path"),
        ("http://simulator:8080/v2", "not a scheme://host.*a path"),
        ("http://simulator:8080?x=1", "not a scheme://host.*a path"),
        ("ftp://simulator:21", "not a scheme://host.*only http"),
        ("http://user:pw@simulator:8080", "not a scheme://host.*user info"),
        ("http://*.sim:8080", "not a scheme://host.*not one exact host"),
        ("http://simulator:99999", "not a scheme://host.*malformed host or port"),
        ("http://:8080", "not a scheme://host.*not one exact host"),
    ],
)
def test_allowed_download_hosts_must_name_hosts(value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS: .*{why}"):
        load({"SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS": value})


def test_lease_ttl_has_a_minimum_the_transfer_watch_can_renew_within() -> None:
    from jobs.watch import LEASE_MARGIN, PROGRESS_INTERVAL, STORE_CALL_TIMEOUT

    # Renewed a third into the lease, on the next tick, in one round of store calls, before
    # the margin: the shortest lease must hold that.
    assert MIN_LEASE_TTL / 3 + PROGRESS_INTERVAL + STORE_CALL_TIMEOUT <= (
        MIN_LEASE_TTL - LEASE_MARGIN
    )
    assert load({"SNAPARCHIVE_LEASE_TTL": str(MIN_LEASE_TTL)}).lease_ttl == MIN_LEASE_TTL
    for short in ("1", str(MIN_LEASE_TTL - 1)):
        with pytest.raises(
            ConfigError, match=f"SNAPARCHIVE_LEASE_TTL: must be at least {MIN_LEASE_TTL}"
        ):
            load({"SNAPARCHIVE_LEASE_TTL": short})


def test_allowed_download_hosts_take_scheme_qualified_entries() -> None:
    value = "*.exo.io, http://simulator:8080, https://sos.internal:8443/"
    settings = load({"SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS": value})
    assert settings.transfer.allowed_download_hosts == (
        "*.exo.io",
        "http://simulator:8080",
        "https://sos.internal:8443/",
    )
    assert download_endpoint("http://Simulator:8080") == ("http", "simulator", 8080)
    assert download_endpoint("http://simulator") == ("http", "simulator", 80)
    assert download_endpoint("https://sos.internal") == ("https", "sos.internal", 443)
    assert download_endpoint("*.exo.io") is None


def test_sizes_at_the_edges_of_their_ranges_load() -> None:
    settings = load(
        {
            "SNAPARCHIVE_PART_SIZE": "5GiB",
            "SNAPARCHIVE_MEMORY_LIMIT": "5GiB",
            "SNAPARCHIVE_SEGMENT_LIMIT": "5TiB",
        }
    )
    assert settings.transfer.part_size == 5 * GiB and settings.transfer.segment_limit == 5 * TiB
    assert load({"SNAPARCHIVE_PART_SIZE": "5MiB"}).transfer.part_size == 5 * MiB


def test_the_s3_region_defaults_to_boto3s_chain(monkeypatch, tmp_path) -> None:
    from worker.s3client import s3_client

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert load({}).s3.region is None
    assert load({"AWS_REGION": "eu-west-3"}).s3.region == "eu-west-3"
    assert load({"SNAPARCHIVE_S3_REGION": "ch-gva-2", "AWS_REGION": "x"}).s3.region == "ch-gva-2"
    # boto3 reads AWS_DEFAULT_REGION, then the profile: nothing of ours stands in their way.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-2")
    assert s3_client(load({}).s3).meta.region_name == "eu-central-2"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    config = tmp_path / "config"
    config.write_text("[profile archive]\nregion = ap-south-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "archive")
    assert s3_client(load({}).s3).meta.region_name == "ap-south-2"


def test_aws_endpoint_url_s3_is_used_without_snaparchive_s3_endpoint(monkeypatch) -> None:
    from worker.s3client import s3_client

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert s3_client(load({}).s3).meta.endpoint_url == "http://minio.internal:9000"
    ours = load({"SNAPARCHIVE_S3_ENDPOINT": "https://sos-ch-gva-2.exo.io"}).s3
    assert s3_client(ours).meta.endpoint_url == "https://sos-ch-gva-2.exo.io"  # ours wins
