# The snaparchive image: the worker, the scheduler, the CLI and the simulator.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies in their own layer, read from pyproject.toml: a change to the code alone
# does not install them again.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY worker ./worker
COPY jobs ./jobs
RUN pip install --no-deps . \
    # Without a resumable MD5 (libcrypto's MD5 through ctypes) every resume re-reads and
    # re-hashes the whole prefix: refuse to build such an image.
    && python -c "from worker.md5state import resumable_available; assert resumable_available(), 'no resumable MD5: libcrypto (libssl3) missing or refusing MD5'"

# Not root: a worker only needs the network.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent snaparchive
USER snaparchive

ENTRYPOINT ["snaparchive"]
CMD ["worker"]
