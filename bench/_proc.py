"""
A server process seen from /proc (Linux): memory, descriptors, and the
deleted files it holds (where twisted.web keeps a request body). Shared by
the bench scripts, which run each server in a child process; L{Watch}
samples them in a thread while a measurement runs.
"""

from __future__ import annotations

import os
import threading


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of the process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def deleted_files(pid: int) -> dict[str, int]:
    """Deleted regular files the process holds open (a TemporaryFile): link -> size."""
    out = {}
    d = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(d)
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"{d}/{fd}")
            if link.startswith("/") and link.endswith("(deleted)"):
                out[link] = os.stat(f"{d}/{fd}").st_size
        except OSError:
            continue
    return out


def kib_to_mib(k: float) -> float:
    return k / 1024.0


class Watch:
    """Polls a process's RSS and its deleted (temporary) files every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.max_rss = 0
        self.temp_max = 0
        self.temp_names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        try:
            self.max_rss = max(self.max_rss, proc_status(self.pid).get("VmRSS", 0))
        except OSError:
            pass
        for name, size in deleted_files(self.pid).items():
            self.temp_names.add(name)
            self.temp_max = max(self.temp_max, size)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                self.sample()
                return
