"""Running one measured command: wall time, CPU time and peak RSS of its process tree.

Each measured command runs as a child in a session of its own. Its CPU time comes from
``wait4`` on that child (the child and every descendant it waited for). Its peak RSS is
``ru_maxrss``, the largest single process among them, as GNU time (``/usr/bin/time``)
reports it for the command it runs: Linux charges a process's peak RSS with the memory of
the process that forked it, as it was at ``exec``, so ``wait4`` on a child of this (60 MiB)
Python process could not tell a 20 MiB command from a 60 MiB one, while a command started
by ``time`` inherits ``time``'s 2 MiB. Without GNU time, ``wait4``'s figure is used and the
sample says so. Servers the command talks to (image server, S3 endpoint) are separate
processes; their CPU time is read from ``/proc`` around the run, and so is the machine's
(``/proc/stat``): what neither the command nor the servers account for is another
process's load, which would make the run slower than the machine allows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One run of a command.

    Parameters:
      seconds: Wall time from spawn to exit.
      cpu: User plus system CPU seconds of the command's processes.
      max_rss: Peak resident set of its largest process, in bytes.
      rss_exact: Whether ``max_rss`` came from GNU time (else it is at least the parent's).
      returncode: Exit status (negative: killed by that signal).
      stdout, stderr: What it printed (stderr cut to its last 2,000 characters).
      servers_cpu: CPU seconds each watched server spent meanwhile, by name.
      others_cpu: CPU seconds (user and system) the machine spent meanwhile beyond the
        command and the servers: other processes' load, plus some kernel work.
    """

    seconds: float
    cpu: float
    max_rss: int
    returncode: int
    stdout: str
    stderr: str
    servers_cpu: dict[str, float] = field(default_factory=dict)
    rss_exact: bool = True
    others_cpu: float = 0.0


def machine_cpu() -> float:
    """CPU seconds (user, nice, system) every process of the machine has used since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / _TICKS


def wait_quiet(pids: list[int], seconds: float, threshold: float = 0.15) -> float:
    """Wait until the machine is quiet, at most ``seconds``; return how long it waited.

    Quiet: over one second, the processes other than ``pids`` (and this one) used less
    than ``threshold`` of a core. The benchmark shares the machine with whatever else
    runs on it; a measurement under someone else's load says more about that load.
    """
    waited = 0.0
    while True:
        own = [os.getpid(), *pids]
        before, mine = machine_cpu(), sum(process_cpu(pid) for pid in own)
        time.sleep(1.0)
        other = machine_cpu() - before - (sum(process_cpu(pid) for pid in own) - mine)
        if other < threshold or waited >= seconds:
            return waited
        waited += 1.0


def _gnu_time() -> str | None:
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    try:
        answer = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return path if "GNU" in answer.stdout + answer.stderr else None


GNU_TIME = _gnu_time()


def process_cpu(pid: int) -> float:
    """Return the CPU seconds (user + system) process ``pid`` has used, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name start at state (field 3); utime, stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float,
    servers: Mapping[str, int] | None = None,
    watch: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Sample:
    """Run ``argv`` to its end and measure it.

    Parameters:
      argv: The command.
      env: Its whole environment.
      timeout: Seconds after which its session is killed (the sample then has returncode
        -9 and whatever it printed).
      servers: Name -> pid of servers whose CPU time to report.
      watch: Called in a thread with the process once started (to kill it on a condition:
        kill its session, :func:`kill_session`, since the process may be GNU time).
    """
    servers = servers or {}
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        command = list(argv)
        if GNU_TIME is not None:
            command = [GNU_TIME, "--quiet", "-f", "%M", "-o", rss.name, *command]
        before = {name: process_cpu(pid) for name, pid in servers.items()}
        machine_before = machine_cpu()
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=dict(env), stdout=out, stderr=err, start_new_session=True
        )
        timer = threading.Timer(timeout, kill_session, (process.pid,))
        timer.start()
        watcher = None
        if watch is not None:
            watcher = threading.Thread(target=watch, args=(process,), daemon=True)
            watcher.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if watcher is not None:
            watcher.join(timeout=5)
        servers_cpu = {name: process_cpu(pid) - before[name] for name, pid in servers.items()}
        machine = machine_cpu() - machine_before
        out.seek(0)
        err.seek(0)
        reported = rss.read().split()
        exact = bool(reported) and reported[-1].isdigit()
        cpu = usage.ru_utime + usage.ru_stime
        return Sample(
            seconds=seconds,
            cpu=cpu,
            others_cpu=max(0.0, machine - cpu - sum(servers_cpu.values())),
            max_rss=(int(reported[-1]) if exact else usage.ru_maxrss) * 1024,
            rss_exact=exact,
            returncode=process.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace")[-2000:],
            servers_cpu=servers_cpu,
        )


def kill_session(pid: int) -> None:
    """SIGKILL every process of the session ``pid`` leads (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when there are none)."""
    return statistics.median(values) if values else float("nan")
