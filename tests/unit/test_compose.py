"""The compose files, as Compose interpolates and merges them (``config``: no daemon needed).

The base file talks to the real Exoscale API and requires its credentials; the rehearsal
(``compose.rehearsal.env`` naming both files) adds the simulator as an ordinary service that
the workers reach at ``http://simulator:8080``. The interpolated values are read back with
snaparchive's own settings and download policy. Without Compose these tests skip, unless
``SNAPARCHIVE_COMPOSE_CHECK=required`` (set by ``.ci/run``, which installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.download import check_download_url
from worker.errors import DownloadRefused
from worker.policy import load as load_policies
from worker.settings import load

ROOT = Path(__file__).resolve().parents[2]
FILES = ("docker-compose.yml", "compose.rehearsal.yml")
#: Services whose image is built here (``build: .``); every other image is pulled.
BUILT = "snaparchive:local"
#: A pinned image: a tag that names a release, or a digest.
PINNED = re.compile(r"^[^:@\s]+(:(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?$")


def _compose() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (Debian's), whichever works here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    found = _compose()
    if found is None:
        if os.environ.get("SNAPARCHIVE_COMPOSE_CHECK") == "required":
            pytest.fail("neither `docker compose` nor `docker-compose` is installed")
        pytest.skip("no docker compose here (.ci/run installs it)")
    return found


def config(compose: list[str], env_file: Path, *files: str) -> subprocess.CompletedProcess:
    """``config`` of ``files`` (default: COMPOSE_FILE from ``env_file``) with nothing of this
    process's environment that Compose would interpolate."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SNAPARCHIVE_", "EXOSCALE_", "MINIO_", "COMPOSE_", "AWS_"))
    }
    argv = [*compose, "--env-file", str(env_file)]
    for name in files:
        argv += ["-f", name]
    return subprocess.run(
        [*argv, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def services(compose: list[str], env_file: Path, *files: str) -> dict[str, Any]:
    shown = config(compose, env_file, *files)
    assert shown.returncode == 0, shown.stderr
    return yaml.safe_load(shown.stdout)["services"]


def _env_file(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "test.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


REAL = {
    "EXOSCALE_API_KEY": "EXOreal",
    "EXOSCALE_API_SECRET": "real-secret",
    "MINIO_ROOT_PASSWORD": "minio-secret",
}


def test_no_zone_inside_an_interpolation_default() -> None:
    # Compose ends ${VAR:-default} at its first "}": ${X:-http://h/{zone}/v2} gives
    # http://h/{zone/v2}. Checked on the text, whatever Compose is installed.
    for name in FILES:
        text = (ROOT / name).read_text()
        assert not re.search(r"\$\{[^}]*\{", text), name


@pytest.mark.parametrize("missing", sorted(REAL))
def test_the_base_file_requires_credentials(compose, tmp_path, missing) -> None:
    values = {k: v for k, v in REAL.items() if k != missing}
    shown = config(compose, _env_file(tmp_path, **values), "docker-compose.yml")
    assert shown.returncode != 0
    assert f"set {missing} in .env" in shown.stderr


def test_the_base_file_talks_to_exoscale(compose, tmp_path) -> None:
    found = services(compose, _env_file(tmp_path, **REAL), "docker-compose.yml")
    assert set(found) == {"redis", "minio", "minio-bucket", "worker", "scheduler"}
    for name in ("worker", "scheduler"):
        env = found[name]["environment"]
        settings = load(env)
        assert settings.exoscale.url("ch-gva-2") == "https://api-ch-gva-2.exoscale.com/v2"
        assert (settings.exoscale.key, settings.exoscale.secret) == ("EXOreal", "real-secret")
        assert settings.transfer.allowed_download_hosts == ("*.exo.io",)
        assert env["AWS_SECRET_ACCESS_KEY"] == "minio-secret"
        assert settings.s3.endpoint == "http://minio:9000" and settings.s3.bucket
        assert env["SNAPARCHIVE_METRICS_PORT"] == "9191"
        assert "9191" in [str(port) for port in found[name]["expose"]]
        assert found[name]["image"] == BUILT and found[name]["build"]
        assert found[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "minio-bucket": {"condition": "service_completed_successfully"},
        }
    assert found["worker"]["command"][0] == "worker"
    assert found["scheduler"]["command"] == ["scheduler"]  # snaparchive scheduler
    assert found["scheduler"]["environment"]["SNAPARCHIVE_POLICIES"].startswith("/etc/snaparchive/")


def test_an_endpoint_from_env_keeps_its_zone(compose, tmp_path) -> None:
    endpoint = "https://api-{zone}.example.net/v2"
    env_file = _env_file(tmp_path, **REAL, EXOSCALE_API_ENDPOINT=endpoint)
    found = services(compose, env_file, "docker-compose.yml")
    assert found["worker"]["environment"]["EXOSCALE_API_ENDPOINT"] == endpoint
    assert load(found["worker"]["environment"]).exoscale.url("at-vie-1") == (
        "https://api-at-vie-1.example.net/v2"
    )


def test_healthchecks_conditions_and_pinned_images(compose, tmp_path) -> None:
    found = services(compose, ROOT / "compose.rehearsal.env")
    for name in ("redis", "minio", "simulator"):
        assert found[name]["healthcheck"]["test"], name
    assert found["minio-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name, service in found.items():
        image = service["image"]
        assert image == BUILT if "build" in service else PINNED.match(image), (name, image)
        assert ":" in image or "@" in image, (name, image)
        assert "network_mode" not in service, name  # each its own: a kill takes only it
    # MinIO's console on this host's loopback only; nothing else published.
    ports = found["minio"]["ports"]
    assert len(ports) == 1
    port = ports[0]
    if isinstance(port, dict):  # Compose v2 writes the long syntax
        assert (port["host_ip"], str(port["published"]), port["target"]) == (
            "127.0.0.1",
            "9001",
            9001,
        )
    else:
        assert port.startswith("127.0.0.1:9001:9001")
    assert [name for name, s in found.items() if s.get("ports")] == ["minio"]


def test_the_rehearsal_reaches_the_simulator_on_the_compose_network(compose) -> None:
    found = services(compose, ROOT / "compose.rehearsal.env")
    simulator = found["simulator"]
    command = simulator["command"]
    option = {command[i]: command[i + 1] for i in range(1, len(command) - 1, 2)}
    assert command[0] == "simulate" and option["--host"] == "simulator"
    assert simulator["hostname"] == "simulator" and option["--port"] == "8080"
    for name in ("worker", "scheduler"):
        env = found[name]["environment"]
        # {zone} literally: interpolation left it alone.
        assert env["EXOSCALE_API_ENDPOINT"] == "http://simulator:8080/{zone}/v2"
        settings = load(env)
        assert settings.exoscale.url("ch-gva-2") == "http://simulator:8080/ch-gva-2/v2"
        assert (settings.exoscale.key, settings.exoscale.secret) == (
            option["--key"],
            option["--secret"],
        )
        assert found[name]["depends_on"]["simulator"] == {"condition": "service_healthy"}
        # The simulator's presigned URLs pass the download policy; nothing else on http does.
        allowed = settings.transfer.allowed_download_hosts
        assert allowed == ("http://simulator:8080",)
        url = "http://simulator:8080/_download/ch-gva-2/3f0c1d9e?expires=1&signature=abc"
        assert check_download_url(url, allowed) == "simulator"
        for other in ("http://simulator:9000/x", "http://minio:9000/x", "https://simulator/x"):
            with pytest.raises(DownloadRefused):
                check_download_url(other, allowed)


def test_the_rehearsal_policy_is_valid_and_finds_the_simulators_instance(compose) -> None:
    found = services(compose, ROOT / "compose.rehearsal.env")
    scheduler = found["scheduler"]
    target = scheduler["environment"]["SNAPARCHIVE_POLICIES"]
    mounts = {}
    for volume in scheduler["volumes"]:
        if isinstance(volume, dict):  # Compose v2's long syntax
            mounts[volume["target"]] = volume["source"]
        else:
            source, mounted = volume.split(":")[:2]
            mounts[mounted] = source
    policies = load_policies(mounts[target])
    (policy,) = policies.policies
    command = found["simulator"]["command"]
    instance_id, _, spec = command[command.index("--instance") + 1].partition(":")
    labels = dict(pair.split("=") for pair in spec.split(","))
    assert policy.zone == "ch-gva-2" and policy.selects(instance_id, labels)


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_installs_dependencies_first_runs_as_a_user_and_checks_the_md5() -> None:
    steps = _instructions()
    kinds = [kind for kind, _ in steps]
    base = steps[0][1]
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base)
    # Dependencies from pyproject.toml alone, before the code is copied.
    copies = [arg for kind, arg in steps if kind == "COPY"]
    assert copies[0] == "pyproject.toml ./"
    first_code = kinds.index("COPY", kinds.index("RUN"))
    assert "pip install -r" in steps[kinds.index("RUN")][1]
    assert kinds.index("RUN") < first_code
    # The build fails without a resumable MD5: run its very check here.
    check = next(arg for kind, arg in steps if kind == "RUN" and "resumable_available" in arg)
    snippet = re.search(r'python -c "([^"]+)"', check)
    assert snippet is not None
    subprocess.run([sys.executable, "-c", snippet.group(1)], check=True, timeout=60)
    user = [arg for kind, arg in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0") and kinds.index("USER") > first_code
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)
