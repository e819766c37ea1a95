"""What the benchmark ran on: CPU, memory, OS, Python, date, commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "unknown"


#: The files whose uncommitted changes would make the figures another commit's.
_MEASURED = (
    "bench",
    "worker/transfer",
    "worker/download.py",
    "worker/retry.py",
    "worker/md5state.py",
    "worker/parts.py",
    "worker/archive.py",
    "worker/settings.py",
    "worker/simulator",
)


def _commit() -> str:
    def git(*args: str) -> str:
        answer = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return answer.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *_MEASURED)
    except OSError:
        return "unknown"
    note = " + uncommitted changes to the engine or bench" if dirty else ""
    return f"{head}{note}" if head else "unknown"


def describe() -> dict[str, str]:
    """Return the facts about this machine and run, as label -> text."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, nproc {len(os.sched_getaffinity(0))}",
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "commit": _commit(),
    }
