"""
``streamsvc-client`` against the clients a user would pick instead (issue 15):
``get`` vs ``curl`` vs ``wget`` downloading the same file from one streamsvc,
and ``put`` vs ``curl -T`` uploading it.

    python bench/bench_client.py [--runs 5] [--quick] [--keep]

One ``twistd -n streamsvc`` (from the venv of this Python) serves a file of
real bytes (1 GiB; 256 MiB with ``--quick``) on 127.0.0.1, with a token for
uploads and ``max_upload_bytes`` raised to fit it. Each run does every client
once, in an order rotated run by run so the machine's noise falls on all
alike:

- **get** -- ``streamsvc-client get URL -o OUT -q``, ``curl -sS -o OUT URL``,
  ``wget -q -O OUT URL``; MiB/s = size / wall time of the client process,
  start-up included (for a Python client ~0.2 s, printed on its own: a get
  of a 0-byte file). One download per client before the first run warms
  the page cache and is not counted.
  Every download's size is checked; the first run's are compared with the
  source by sha256.
- **client peak RSS** -- VmHWM of the client process itself, read from
  ``/proc/PID/status`` every 20 ms while it runs (the last value before it
  exits). Not getrusage: on Linux, ``ru_maxrss`` of a child carries the
  parent's RSS across subprocess's vfork + exec.
- **put** -- ``streamsvc-client put FILE URL --token T`` (which first reads the
  file once to compute its ``Content-Digest``), the same with ``--no-digest``,
  and ``curl -sS -T FILE -H 'Authorization: Bearer T' URL``; the server must
  answer 201 or 204. streamsvc fsyncs the upload before it answers, which is
  in every client's time alike.

Targets: get >= 0.7x curl with peak RSS <= 64 MiB; put >= 0.7x curl -T.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _child import clean_env, log  # noqa: E402
from _machine import other_cpu_users, tool_version, tree_check  # noqa: E402
from _report import Results, table  # noqa: E402

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
CLIENT = os.path.join(BIN, "streamsvc-client")
TOKEN = "bench-token"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def make_file(path: str, size: int) -> None:
    """Real bytes (a random 1 MiB block repeated), so the disk and page cache are honest."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)


def start_server(tmp: str) -> tuple[subprocess.Popen, int]:
    conf = os.path.join(tmp, "tap.conf")
    with open(conf, "w") as f:
        f.write(f"[auth]\ntokens = {TOKEN}\n[limits]\nmax_upload_bytes = 4GiB\n"
                "[server]\naccess_log = off\n")
    port = free_port()
    out = open(os.path.join(tmp, "server.out"), "wb")
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(tmp, "server.log"), "streamsvc",
         "--config", conf, "--data-dir", os.path.join(tmp, "data"),
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(open(os.path.join(tmp, "server.out")).read())
            time.sleep(0.1)


def run_client(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB, VmHWM sampled every 20 ms) and stdout of one client run."""
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())

    def watch() -> None:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return seconds, peak[0], out.decode(errors="replace")


def get_commands(url: str, out: str) -> dict[str, list[str]]:
    commands = {"streamsvc-client": [CLIENT, "get", url, "-o", out, "-q"]}
    if shutil.which("curl"):
        commands["curl"] = ["curl", "-sS", "-o", out, url]
    if shutil.which("wget"):
        commands["wget"] = ["wget", "-q", "-O", out, url]
    return commands


def put_commands(src: str, url: str) -> dict[str, list[str]]:
    commands = {
        "streamsvc-client": [CLIENT, "put", src, url, "--token", TOKEN],
        "streamsvc-client --no-digest": [CLIENT, "put", src, url, "--token", TOKEN, "--no-digest"],
    }
    if shutil.which("curl"):
        commands["curl -T"] = ["curl", "-sS", "-T", src, "-H", f"Authorization: Bearer {TOKEN}",
                               "-o", "/dev/null", "-w", "%{http_code}", url]
    return commands


def rotated(names: list[str], run: int) -> list[str]:
    k = run % len(names)
    return names[k:] + names[:k]


def measure(runs: int, size: int, tmp: str, results: Results) -> None:
    files = os.path.join(tmp, "data", "files")
    os.makedirs(files)
    src = os.path.join(files, "big.bin")
    make_file(src, size)
    source_sha = sha256_of(src)
    proc, port = start_server(tmp)
    try:
        log(f"server pid {proc.pid} on port {port}; {size // MIB} MiB file; "
            f"other CPU users: {other_cpu_users(ours={proc.pid})}")
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        url = f"http://127.0.0.1:{port}/files/big.bin"
        with open(os.path.join(files, "empty"), "wb"):
            pass
        for name, argv in get_commands(url, os.path.join(out_dir, "warm")).items():
            run_client(argv)  # warm-up, not counted: page cache, first connections
            os.unlink(os.path.join(out_dir, "warm"))
        for run in range(runs):
            # the fixed cost of a Python client: start-up and one request, for a 0-byte file
            empty = os.path.join(out_dir, "empty")
            seconds, peak, _ = run_client(get_commands(f"http://127.0.0.1:{port}/files/empty", empty)["streamsvc-client"])
            os.unlink(empty)
            results.add("start-up: get of 0 bytes", {"s": seconds, "rss": peak / 1024}, "")
            for name in rotated(list(get_commands("", "")), run):
                out = os.path.join(out_dir, "big.bin")
                seconds, peak, _ = run_client(get_commands(url, out)[name])
                got = os.path.getsize(out)
                if got != size:
                    raise RuntimeError(f"{name}: {got} bytes, not {size}")
                checked = ""
                if run == 0:
                    if sha256_of(out) != source_sha:
                        raise RuntimeError(f"{name}: the download differs from the source")
                    checked = ", sha256 ok"
                for leftover in (out, out + ".part", out + ".part.meta"):
                    if os.path.exists(leftover):
                        os.unlink(leftover)
                results.add(f"get {name}", {"mib_s": size / MIB / seconds, "rss": peak / 1024},
                            f"{seconds:.2f} s{checked}")
                log(f"run {run + 1} get {name}: {size / MIB / seconds:.0f} MiB/s, peak RSS {peak / 1024:.1f} MiB")
            for name in rotated(list(put_commands("", "")), run):
                seconds, peak, out = run_client(put_commands(src, f"http://127.0.0.1:{port}/files/up.bin")[name])
                code = out.strip()[:3]
                if code not in ("201", "204"):
                    raise RuntimeError(f"{name}: answered {out.strip()[:200]!r}")
                if os.path.getsize(os.path.join(files, "up.bin")) != size:
                    raise RuntimeError(f"{name}: the upload is not {size} bytes")
                results.add(f"put {name}", {"mib_s": size / MIB / seconds, "rss": peak / 1024},
                            f"{seconds:.2f} s, {code}")
                log(f"run {run + 1} put {name}: {size / MIB / seconds:.0f} MiB/s, peak RSS {peak / 1024:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(30)


def report(results: Results, size: int, runs: int) -> None:
    print(f"\n## streamsvc-client vs curl/wget, {size // MIB} MiB over loopback, medians of {runs}\n")
    rows = [("client", "MiB/s", "vs curl", "peak RSS (MiB)", "target")]
    for kind, peer in (("get", "get curl"), ("put", "put curl -T")):
        base = results.median(peer, "mib_s")
        for name in [n for n in results.values if n.startswith(kind + " ")]:
            rate, rss = results.median(name, "mib_s"), results.median(name, "rss")
            ratio = rate / base if base and rate else None
            goal = ""
            if name == "get streamsvc-client" and ratio is not None:
                ok = ratio >= 0.7 and rss <= 64
                goal = f">= 0.7x, <= 64 MiB: {'pass' if ok else 'MISS'}"
            elif name == "put streamsvc-client" and ratio is not None:
                goal = f">= 0.7x: {'pass' if ratio >= 0.7 else 'MISS'}"
            rows.append((name, f"{rate:.0f}", f"{ratio:.2f}x" if ratio else "-", f"{rss:.1f}", goal))
    table(rows)
    startup = results.median("start-up: get of 0 bytes", "s")
    if startup is not None:
        print(f"\nstreamsvc-client's fixed cost (interpreter, imports, one request; a get of a 0-byte "
              f"file): {startup:.2f} s, median of {len(results.all('start-up: get of 0 bytes', 's'))}")
    print("\nIndividual runs (MiB/s, peak RSS MiB), in run order:\n")
    for name in [n for n in results.values if not n.startswith("start-up")]:
        rates = ", ".join(f"{v:.0f}" for v in results.all(name, "mib_s"))
        rss = ", ".join(f"{v:.1f}" for v in results.all(name, "rss"))
        print(f"  {name:32} {rates}   | RSS {rss}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 runs of a 256 MiB file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    runs, size = (2, 256 * MIB) if args.quick else (args.runs, 1024 * MIB)
    for tool in (TWISTD, CLIENT):
        if not os.path.exists(tool):
            print(f"{tool} is missing: pip install . into this Python's venv first", file=sys.stderr)
            return 1
    for peer in ("curl", "wget"):
        if not shutil.which(peer):
            print(f"({peer} is not installed: its lines are left out)")
    import streamsvc

    print(f"python {sys.version.split()[0]}; {tool_version(['curl', '--version'])}; "
          f"{tool_version(['wget', '--version'])}")
    print(tree_check(os.path.dirname(streamsvc.__file__)))
    tmp = tempfile.mkdtemp(prefix="bench_client.")
    results = Results()
    try:
        measure(runs, size, tmp, results)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(results, size, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
