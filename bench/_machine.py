"""
What the benchmark scripts share about the machine they run on: who else is
using the CPU, and which streamsvc code the servers really run (the installed
copy against the working tree, and the git commit it matches).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

#: The working tree's package, to compare the installed copy with.
TREE_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "streamsvc")


def _proc_cpu_ticks() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(b")") + 2:].split()
        out[int(d)] = int(fields[11]) + int(fields[12])   # utime + stime
    return out


def other_cpu_users(seconds: float = 1.0, threshold: float = 0.10, ours: set[int] | None = None) -> str:
    """Processes other than ours using more than `threshold` of a CPU over `seconds`."""
    try:
        ours = {os.getpid()} | (ours or set())
        hz = os.sysconf("SC_CLK_TCK")
        a = _proc_cpu_ticks()
        time.sleep(seconds)
        b = _proc_cpu_ticks()
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        busy = []
        for pid, ticks in b.items():
            share = (ticks - a.get(pid, ticks)) / hz / seconds
            if share < threshold or pid in ours:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                with open(f"/proc/{pid}/stat", "rb") as f:
                    st = f.read()
                if int(st[st.rfind(b")") + 2:].split()[1]) in ours:   # our servers
                    continue
            except OSError:
                continue
            busy.append(f"pid {pid} {share * 100:.0f}% {cmd[:70]}")
        return f"loadavg {load}; other processes using CPU: " + ("; ".join(busy) if busy else "none")
    except OSError as e:
        return f"(could not check other CPU users: {e})"


def find_commit(installed: str, depth: int = 30) -> str | None:
    """The recent commit whose streamsvc/*.py are exactly the installed ones (git blob ids)."""
    def blob(path: str) -> str:
        with open(path, "rb") as f:
            data = f.read()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    mine = {n: blob(os.path.join(installed, n)) for n in os.listdir(installed) if n.endswith(".py")}
    repo = os.path.dirname(TREE_PACKAGE)
    try:
        log_ = subprocess.run(["git", "-C", repo, "log", f"-n{depth}", "--format=%h %s"],
                              capture_output=True, text=True, timeout=20)
        for line in log_.stdout.splitlines():
            commit, _, subject = line.partition(" ")
            r = subprocess.run(["git", "-C", repo, "ls-tree", commit, "streamsvc/"],
                               capture_output=True, text=True, timeout=20)
            theirs = {}
            for row in r.stdout.splitlines():
                meta, _, path = row.partition("\t")
                name = path.rsplit("/", 1)[-1]
                if name.endswith(".py"):
                    theirs[name] = meta.split()[2]
            if theirs == mine:
                head = " (HEAD)" if line == log_.stdout.splitlines()[0] else ""
                return f"git commit {commit}{head}: {subject[:60]}"
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return None


def tree_check(installed: str) -> str:
    """Whether the streamsvc the servers import is the working tree next to this script."""
    def digests(d: str) -> dict[str, str]:
        out = {}
        for n in sorted(os.listdir(d)):
            if n.endswith(".py"):
                with open(os.path.join(d, n), "rb") as f:
                    out[n] = hashlib.sha256(f.read()).hexdigest()
        return out
    try:
        a, b = digests(installed), digests(TREE_PACKAGE)
    except OSError as e:
        return f"(could not compare with the working tree: {e})"
    if os.path.realpath(installed) == os.path.realpath(TREE_PACKAGE):
        return "(imported from the working tree itself)"
    diff = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    fp = hashlib.sha256("".join(a[n] for n in sorted(a)).encode()).hexdigest()[:12]
    if not diff:
        return f"installed copy == working tree {TREE_PACKAGE} (sources sha256 {fp})"
    text = (f"installed copy differs from the working tree {TREE_PACKAGE} in: {', '.join(diff)} "
            f"(installed sources sha256 {fp})")
    # Read-only git look-ups: is it one of the recent commits, then?
    found = find_commit(installed)
    if found:
        return text + f"; it is {found}"
    return "WARNING " + text + "; `pip install .` to measure the tree"


def filesystem_of(path: str, device: bool = False) -> str:
    """The mount point and type the path is on (from /proc/mounts), and the device if asked."""
    try:
        path = os.path.realpath(path)
        best = ("", "?", "?")
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, typ, dev)
        if device:
            return f"{best[1]} on {best[0]} ({best[2]})"
        return f"{best[1]} on {best[0]}"
    except OSError:
        return "?"


def tool_version(argv: list[str], or_stderr: bool = False) -> str:
    """The first line a tool prints for its version (its stdout, or its stderr if that is empty and asked)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (r.stdout or r.stderr) if or_stderr else r.stdout
        return (text.splitlines() or ["?"])[0].strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_lines(driver_note: str = "", memory_note: str = "") -> list[str]:
    """
    The lines every report starts with: cores, kernel, the driver's Python
    (C{driver_note} appended, e.g. its sha256 speed), the CPU model and the
    memory (C{memory_note} appended, e.g. the vm dirty settings).
    """
    lines = [f"nproc: {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})",
             f"kernel: {platform.release()}",
             f"driver Python: {platform.python_version()} ({sys.executable})"
             + (f"; {driver_note}" if driver_note else "")]
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        lines.append(f"cpu: {model}")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = {l.split(":")[0]: l.split()[1] for l in f}
        lines.append(f"memory: {int(mem['MemTotal']) // 1024} MiB total, "
                     f"{int(mem['MemAvailable']) // 1024} MiB available"
                     + (f"; {memory_note}" if memory_note else ""))
    except (OSError, KeyError, ValueError):
        pass
    return lines


def server_lines(servers: Iterable[Any], streamsvc_note: Callable[[dict], str] = lambda info: "",
                 peer_note: Callable[[dict], str] = lambda info: "") -> list[str]:
    """
    One line per started C{--serve} child (its C{info} from the port file):
    Python, Twisted and reactor, then C{streamsvc_note(info)} for streamsvc
    (after its version and package) or C{peer_note(info)} for a peer; each
    streamsvc package once with L{tree_check}.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for s in servers:
        i = s.info
        if not i:
            continue
        line = (f"server {s.name} (pid {s.pid}): Python {i.get('python')}; Twisted {i.get('twisted')}; "
                f"{i.get('reactor')}")
        if s.kind == "streamsvc":
            note = streamsvc_note(i)
            lines.append(line + f"; streamsvc {i.get('streamsvc_version')} from {i.get('streamsvc_file')}"
                         + (f"; {note}" if note else ""))
            pkg = i.get("streamsvc_file")
            if pkg and pkg not in seen:
                seen.add(pkg)
                lines.append("  " + tree_check(pkg))
        else:
            note = peer_note(i)
            lines.append(line + (f"; {note}" if note else ""))
    return lines


def busy_warning(load_before: str) -> str:
    """The warning a report carries when other processes used the CPU as the runs started (or "")."""
    if load_before.endswith("CPU: none"):
        return ""
    return "WARNING: other processes were using CPU when the runs started; the figures may be noisy"


def print_machine(lines: Iterable[str], load_before: str, load_after: str,
                  servers: Iterable[Any] = (), *, warn: bool = True) -> None:
    """
    A report's "Machine:" block: C{lines} (L{machine_lines} and the
    script's own), the CPU users at start and end, the busy warning, and
    for each server with a log (C{log_problems}) its error-looking lines.
    """
    print("Machine:")
    for line in lines:
        print("  " + line)
    print(f"  at start: {load_before}")
    print(f"  at end:   {load_after}")
    warning = busy_warning(load_before) if warn else ""
    if warning:
        print("  " + warning)
    for s in servers:
        if hasattr(s, "log_problems"):
            problems = s.log_problems()
            print(f"  {s.name} log: " + (f"{len(problems)} error-looking lines, e.g. {problems[0][:150]!r}"
                                          if problems else "no error-looking lines"))
