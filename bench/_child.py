"""
What the benchmark scripts share about the server processes they start:
whether one is alive, the tail of its output when it died, and stopping its
whole process group (each server runs in a session of its own).

The classes that use it set C{name}, C{proc}, C{outfile} and C{logfile}.
"""

from __future__ import annotations

import os
import signal
import subprocess


class ChildServer:
    name: str
    proc: subprocess.Popen | None
    outfile: str
    logfile: str

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} server exited (rc={self.proc.returncode if self.proc else None})\n"
                + self.tail()
            )

    def tail(self, n: int = 30) -> str:
        parts = []
        for f in (self.outfile, self.logfile):
            try:
                with open(f, "rb") as fh:
                    lines = fh.read().decode("utf-8", "replace").splitlines()[-n:]
                parts.append(f"--- {f} (last {len(lines)} lines)\n" + "\n".join(lines))
            except OSError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)  # own session: the group id is its pid
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
