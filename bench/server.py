"""A loopback HTTP server in a child process, as the benchmark's stores run: started,
probed until it answers, terminated at the end."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Wait until ``url`` answers, or fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                answer.read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds:g} s")


class ServerProcess:
    """A child process serving HTTP on ``127.0.0.1:port``; a base for context managers.

    Parameters:
      port: The loopback port it listens on (default: a free one).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def _start(self, command: list[str], probe: str, env: Mapping[str, str] | None = None) -> None:
        """Run ``command`` and wait until ``probe`` (a path) answers."""
        self._process = subprocess.Popen(
            command,
            env=dict(env) if env is not None else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(f"{self.endpoint}{probe}", self._process)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            self._process = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._process is not None
        return self._process.pid
