#!/usr/bin/env bash
# Set-up and entry points for a fresh machine.
#   ./dev.sh demo   archive a simulated Exoscale snapshot into a local S3 endpoint, end to end
#   ./dev.sh test   run the test suite (starts Redis and RabbitMQ when they are not running)
#   ./dev.sh bench  run the benchmarks (archive, resume, restore) and rewrite bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '[dev.sh] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 i
  for i in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$name did not open port $port"; return 1
}

apt_install() {
  # Installs Debian packages only when their command is missing.
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "installing $* from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

setup_python() {
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    log "installing snaparchive and its test dependencies into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  apt_install redis-server redis-server
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/snaparchive-redis.log
  wait_port 6379 redis
}

ensure_compose() {
  # `docker compose config` (v2) or Debian's `docker-compose config` checks the compose files
  # without a Docker daemon (tests/unit/test_compose.py); the daemon is not installed.
  { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } && return 0
  command -v docker-compose >/dev/null 2>&1 && return 0
  log "installing docker compose from Debian's packages"
  $SUDO apt-get update -qq
  local pkg
  for pkg in docker-compose-v2 docker-compose-plugin docker-compose; do
    apt-cache show "$pkg" >/dev/null 2>&1 || continue
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$pkg" \
      >/dev/null && return 0
  done
  log "no docker compose package found"; return 1
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  apt_install rabbitmq-server rabbitmq-server
  log "starting rabbitmq-server on 127.0.0.1:5672"
  $SUDO rabbitmq-server -detached
  wait_port 5672 rabbitmq
}

case "${1:-}" in
  demo)
    setup_python
    exec .venv/bin/snaparchive demo "${@:2}"
    ;;
  test)
    setup_python
    ensure_redis
    ensure_rabbitmq
    apt_install redis-server redis-server  # tests start their own redis-server to restart it
    apt_install qemu-img qemu-utils  # the reference for qcow2 images and their raw conversion
    # CI (.ci/run) checks the compose files too; elsewhere those tests skip without Compose.
    [ "${SNAPARCHIVE_COMPOSE_CHECK:-}" != required ] || ensure_compose
    .venv/bin/ruff check worker jobs tests bench
    .venv/bin/mypy  # files and strictness: [tool.mypy] in pyproject.toml
    # Test files run side by side (pytest-xdist), each file in one process: a file's tests
    # share their Redis database and fixtures; files share nothing but the services.
    exec .venv/bin/pytest -q -n "${SNAPARCHIVE_TEST_PROCESSES:-4}" --dist loadfile "${@:2}"
    ;;
  bench)
    setup_python
    ensure_redis  # the worker kills run on the Redis broker
    # The peers and tools the benchmark compares with; one that cannot be installed is
    # skipped by the benchmark with a note.
    for spec in curl:curl openssl:openssl /usr/bin/time:time rclone:rclone aws:awscli \
        qemu-img:qemu-utils zstd:zstd; do
      apt_install "${spec%%:*}" "${spec#*:}" || log "${spec#*:} unavailable; the benchmark skips what needs it"
    done
    exec .venv/bin/python -m bench.run "${@:2}"
    ;;
  *)
    echo "usage: ./dev.sh demo | test | bench" >&2
    exit 2
    ;;
esac
