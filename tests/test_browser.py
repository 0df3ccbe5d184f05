"""
streamsvc in a real headless Chromium (issue 17): the listing page, folder
navigation, an upload by the file input (its hash checked on disk), a
cancelled upload that leaves nothing, resumable uploads (issue 31: one cut
by the network that resumes by itself, one cut by a page reload that
resumes when the same file is chosen again), a protected audio/video file played
and seeked through a signed link, a throttled download watched on the
dashboard as its client stops reading, and an NDJSON export fetched from
another origin with CORS.

Needs Debian's chromium and chromium-driver and selenium (.ci/run installs
them); skipped with a message where they are missing. Screenshots go to
C{$STREAMSVC_SCREENSHOTS}, or a temporary folder printed at the end.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from pathlib import Path
from typing import Any

import pytest

from test_tap import TWISTD, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or not os.path.exists(CHROMIUM) or not os.path.exists(CHROMEDRIVER),
    reason="browser tests need selenium, chromium and chromium-driver "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)

TOKEN = "br0wser-token"
MiB = 1024 * 1024


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # waiting for other processes (the browser, the server)


class Streamsvc:
    """A real C{twistd streamsvc} on a free port, its data in C{folder}."""

    def __init__(self, folder: Path, conf: str) -> None:
        self.folder = folder
        (folder / "data" / "files").mkdir(parents=True, exist_ok=True)
        self.files = folder / "data" / "files"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = folder / "access.log"
        (folder / "tap.conf").write_text(
            f"[server]\naccess_log_file = {self.access_log}\n{conf}\n"
        )
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={folder / 'twistd.log'}", "streamsvc",
             "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=folder,
        )

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                assert self.proc.poll() is None, (folder / "twistd.log").read_text()
                return False

        wait_for(up, "streamsvc to listen")

    def call(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body if method != "GET" else None,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: Any) -> Path:
    folder = Path(os.environ.get("STREAMSVC_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nbrowser screenshots in {folder}")


@pytest.fixture(scope="module")
def other_origin() -> Any:
    """A second origin: a page of ours that fetches from streamsvc (CORS)."""
    port = free_port()
    page = (b"<!doctype html><meta charset=utf-8><title>other origin</title><pre id=out></pre>"
            b"<script src=/fetch.js></script>")
    script = (b"const q = new URLSearchParams(location.search);"
              b"fetch(q.get('url'), {headers: {Authorization: 'Bearer ' + q.get('token')}})"
              b".then(r => r.text().then(t => { document.getElementById('out').textContent = r.status + '\\n' + t; }))"
              b".catch(e => { document.getElementById('out').textContent = 'failed: ' + e; });")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = (script, "text/javascript") if self.path.startswith("/fetch.js") else (page, "text/html")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def public(tmp_path_factory: Any, other_origin: str) -> Any:
    server = Streamsvc(
        tmp_path_factory.mktemp("public"),
        f"cors_origins = {other_origin}\n[auth]\ntokens = {TOKEN}\n"
        "[limits]\nrate_limit = 2MiB\nrate_limit_after = 8MiB\nmax_upload_bytes = 4GiB\n",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def protected(tmp_path_factory: Any) -> Any:
    server = Streamsvc(tmp_path_factory.mktemp("protected"),
                       f"[auth]\ntokens = {TOKEN}\nprotect_downloads = yes\n")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: Any) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def with_token(browser: Any, url: str) -> None:
    """Open C{url} with the token in the tab's sessionStorage, as the token field keeps it."""
    browser.get(url)
    browser.execute_script("sessionStorage.setItem('streamsvc.token', arguments[0])", TOKEN)
    browser.get(url)


def test_listing_page_and_folder_navigation(browser: Any, public: Streamsvc, shots: Path) -> None:
    (public.files / "music").mkdir(exist_ok=True)
    (public.files / "music" / "song & dance.txt").write_bytes(b"la la")
    (public.files / "readme.txt").write_bytes(b"hello")
    browser.get(public.url + "/files/")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.dir"), "the folder row")
    rows = browser.find_elements(By.CSS_SELECTOR, "#listing tbody tr")
    assert rows[0].get_attribute("class").split()[0] == "dir"  # folders first
    names = [r.get_attribute("data-name") for r in rows]
    assert "music" in names and "readme.txt" in names
    browser.save_screenshot(str(shots / "listing.png"))
    browser.find_element(By.CSS_SELECTOR, 'tr.dir a[href="music/"]').click()
    wait_for(lambda: browser.current_url.endswith("/files/music/"), "the folder page")
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#listing tbody tr.file"), "its file")[0]
    assert row.get_attribute("data-name") == "song & dance.txt"
    crumbs = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.crumbs a")]
    assert crumbs == ["files", "music"]
    # The token field keeps the token for the tab, and Forget drops it.
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    stored = "return sessionStorage.getItem('streamsvc.token')"
    assert browser.execute_script(stored) == TOKEN
    assert browser.find_element(By.ID, "upload-input")  # the write tools are offered
    browser.find_element(By.ID, "token-forget").click()
    assert browser.execute_script(stored) is None
    assert browser.get_log("browser") == [] or all(
        "Content Security Policy" not in entry["message"] for entry in browser.get_log("browser")
    )


def show_upload_input(browser: Any) -> Any:
    field = wait_for(lambda: browser.find_elements(By.ID, "upload-input"), "the upload input")[0]
    browser.execute_script("arguments[0].style.display = 'block'; arguments[0].hidden = false;", field)
    return field


def test_upload_50_mb_by_the_file_input(browser: Any, public: Streamsvc, shots: Path, tmp_path: Path) -> None:
    source = tmp_path / "fifty.bin"
    with open(source, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(MiB))
    with_token(browser, public.url + "/files/")
    show_upload_input(browser).send_keys(str(source))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'li.upload.done[data-name="fifty.bin"]'),
             "the upload to finish", timeout=120)
    browser.save_screenshot(str(shots / "uploaded.png"))
    target = public.files / "fifty.bin"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_new_folder_delete_and_a_signed_link_from_the_page(browser: Any, public: Streamsvc, shots: Path) -> None:
    (public.files / "share.txt").write_bytes(b"shared")
    (public.files / "doomed.txt").write_bytes(b"bye")
    with_token(browser, public.url + "/files/")
    wait_for(lambda: browser.find_elements(By.ID, "new-folder-name"), "the write tools")
    browser.find_element(By.ID, "new-folder-name").send_keys("made here")
    browser.find_element(By.ID, "new-folder").click()
    wait_for(lambda: (public.files / "made here").is_dir(), "the folder on disk")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'tr.dir[data-name="made here"]'), "its row")
    browser.execute_script("window.confirm = () => true;")
    browser.find_element(By.CSS_SELECTOR, 'tr[data-name="doomed.txt"] button.delete').click()
    wait_for(lambda: not (public.files / "doomed.txt").exists(), "the file deleted")
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, 'tr[data-name="doomed.txt"]'), "its row gone")
    browser.find_element(By.CSS_SELECTOR, 'tr[data-name="share.txt"] button.sign').click()
    link = wait_for(lambda: browser.execute_script(
        "const i = document.querySelector('tr[data-name=\"share.txt\"] input.signed-url'); return i && i.value;"),
        "the signed link")
    browser.save_screenshot(str(shots / "actions.png"))
    assert link.startswith(public.url + "/files/share.txt?expires=")
    with urllib.request.urlopen(link, timeout=30) as answer:  # no token: the link is enough
        assert answer.read() == b"shared"


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".streamsvc-upload-*")]


def pending(server: Streamsvc, *, data_only: bool = False) -> list[str]:
    """
    What resumable uploads hold on the server (DATA_DIR/uploads): a state
    and a data file each. A completed upload keeps only its small state (so
    a client whose answer was lost learns it completed), until it expires.
    """
    folder = server.folder / "data" / "uploads"
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return [name for name in names if not (data_only and name.endswith(".json"))]


def uploads_to(server: Streamsvc, name: str) -> list[str]:
    """The ids of the resumable uploads the server holds for the file C{name}."""
    folder = server.folder / "data" / "uploads"
    return [n[:-5] for n in pending(server) if n.endswith(".json")
            and json.loads((folder / n).read_text())["segments"][-1:] == [name]]


class SlowProxy:
    """
    A loopback TCP proxy in threads in front of a server: the page is
    loaded through it (one origin, one localStorage), what the browser
    sends is relayed at C{rate} bytes a second, and C{cut_after} more bytes
    from the browser cut the connection carrying them (once, by RST).
    C{sent} keeps how many bytes each connection carried to the server.
    """

    def __init__(self, port: int, rate: float) -> None:
        self.target = port
        self.rate = rate
        self.cut_after: int | None = None
        self.cuts = 0
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                browser, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sent.append(0)
                index = len(self.sent) - 1
            threading.Thread(target=self._up, args=(browser, server, index), daemon=True).start()
            threading.Thread(target=self._down, args=(server, browser), daemon=True).start()

    def _cut(self, *sockets: socket.socket) -> None:
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # (wakes the other thread's recv, without which close would wait for it)
            except OSError:
                pass  # closed already
            s.close()

    def _up(self, browser: socket.socket, server: socket.socket, index: int) -> None:
        try:
            while True:
                try:
                    data = browser.recv(64 * 1024)
                except OSError:  # the browser reset the connection (a reload): so do we
                    self._cut(server)
                    return
                if not data:
                    server.shutdown(socket.SHUT_WR)
                    return
                with self.lock:
                    cut = self.cut_after is not None and self.cut_after <= len(data)
                    if self.cut_after is not None:
                        self.cut_after = None if cut else self.cut_after - len(data)
                    self.cuts += cut
                if cut:
                    self._cut(browser, server)
                    return
                server.sendall(data)
                with self.lock:
                    self.sent[index] += len(data)
                time.sleep(len(data) / self.rate)  # the slow link
        except OSError:  # the server closed: the browser is told by a reset, as without us
            self._cut(browser, server)

    def _down(self, server: socket.socket, browser: socket.socket) -> None:
        try:
            while data := server.recv(64 * 1024):
                browser.sendall(data)
            browser.shutdown(socket.SHUT_WR)
        except OSError:
            self._cut(browser, server)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def slow(public: Streamsvc) -> Any:
    proxy = SlowProxy(public.port, rate=24 * MiB)
    yield proxy
    proxy.close()


def random_file(path: Path, mib: int) -> bytes:
    data = os.urandom(mib * MiB)
    path.write_bytes(data)
    return hashlib.sha256(data).digest()


def upload_state(browser: Any, name: str) -> dict[str, Any]:
    return browser.execute_script(
        "const li = document.querySelector(`li.upload[data-name=\"${arguments[0]}\"]`);"
        "if (!li) return {};"
        "const p = li.querySelector('progress');"
        "return {class: li.className, value: p.value, max: p.max, resumedFrom: li.dataset.resumedFrom,"
        " offset: li.dataset.offset, message: li.querySelector('.message').textContent};", name) or {}


def wait_upload(browser: Any, name: str, mark: str, timeout: float = 120) -> dict[str, Any]:
    """The state of the page's upload of C{name} once its row is marked C{mark} (done, interrupted...)."""
    try:
        return wait_for(lambda: mark in upload_state(browser, name).get("class", "").split()
                        and upload_state(browser, name), f"the upload of {name} to be {mark}", timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}; the page shows {upload_state(browser, name)}") from None


def test_an_upload_cut_by_the_network_resumes_by_itself(
    browser: Any, public: Streamsvc, slow: SlowProxy, shots: Path, tmp_path: Path
) -> None:
    source = tmp_path / "cut.bin"
    digest = random_file(source, 48)
    with_token(browser, slow.url + "/files/")
    field = show_upload_input(browser)
    slow.cut_after = 20 * MiB  # the page is loaded: the next 20 MiB from the browser are the upload's
    field.send_keys(str(source))
    state = wait_upload(browser, "cut.bin", "done")
    browser.save_screenshot(str(shots / "upload-resumed.png"))
    assert slow.cuts == 1
    # Resumed from what the server had made durable, not from zero, and not past the cut.
    assert 0 < int(state["resumedFrom"]) <= 20 * MiB, state
    assert hashlib.sha256((public.files / "cut.bin").read_bytes()).digest() == digest
    assert not pending(public, data_only=True)  # its data installed, nothing left beside
    assert browser.execute_script(
        "return Object.keys(localStorage).filter((k) => k.startsWith('streamsvc.upload:')).length") == 0


def test_a_reloaded_page_resumes_when_the_same_file_is_chosen_again(
    browser: Any, public: Streamsvc, slow: SlowProxy, shots: Path, tmp_path: Path
) -> None:
    size = 48 * MiB
    source = tmp_path / "reload.bin"
    digest = random_file(source, 48)
    (public.files / "reload.bin").write_bytes(b"the old version")
    with_token(browser, slow.url + "/files/")
    show_upload_input(browser).send_keys(str(source))
    wait_for(lambda: upload_state(browser, "reload.bin").get("value", 0) > size // 3, "a third sent", timeout=60)
    # The page goes mid-upload (its beforeunload question left out).
    browser.execute_script("window.addEventListener('beforeunload', (e) => e.stopImmediatePropagation(), true)")
    browser.refresh()
    assert (public.files / "reload.bin").read_bytes() == b"the old version"  # served meanwhile
    # The server counts the cut append's bytes once it has seen the cut and
    # made them durable (until then its offset is 0): that done, one more reload.
    upload = browser.execute_script(
        "const k = Object.keys(localStorage).find((k) => k.startsWith('streamsvc.upload:'));"
        "return k && JSON.parse(localStorage.getItem(k)).upload;")
    assert upload and "/uploads/" in upload
    path = urllib.parse.urlsplit(upload).path

    def offset() -> int:
        request = urllib.request.Request(public.url + path, method="HEAD", headers={
            "Authorization": f"Bearer {TOKEN}", "Upload-Draft-Interop-Version": "8"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.headers["Upload-Offset"])

    server_offset = wait_for(offset, "the cut append counted")
    browser.refresh()
    code, body = public.call("GET", "/files/")
    assert code == 200 and b"upload" not in body.replace(b"reload.bin", b"")  # no partial data listed
    # The new page shows the interrupted upload at the server's offset.
    shown = wait_upload(browser, "reload.bin", "interrupted", timeout=30)
    browser.save_screenshot(str(shots / "upload-interrupted.png"))
    assert int(shown["offset"]) == server_offset and shown["value"] == server_offset < size
    before = list(slow.sent)
    show_upload_input(browser).send_keys(str(source))  # the same file again
    state = wait_upload(browser, "reload.bin", "done")
    resumed = int(state["resumedFrom"])
    assert resumed >= int(shown["offset"]) > 0, state
    # Only the rest went: all the connections together carried that and a few requests' headers.
    carried = sum(slow.sent) - sum(before)
    assert size - resumed <= carried < size - resumed + 64 * 1024, (carried, resumed)
    assert hashlib.sha256((public.files / "reload.bin").read_bytes()).digest() == digest
    assert not pending(public, data_only=True)  # its data installed, nothing left beside


def test_a_cancelled_upload_leaves_nothing(browser: Any, public: Streamsvc, shots: Path, tmp_path: Path) -> None:
    source = tmp_path / "huge.bin"
    with open(source, "wb") as f:
        f.truncate(3 * 1024 * MiB)  # 3 GiB of zeros, sparse: big enough to cancel mid-way
    with_token(browser, public.url + "/files/")
    show_upload_input(browser).send_keys(str(source))
    item = 'li.upload[data-name="huge.bin"]'

    def started() -> bool:
        return bool(browser.execute_script(
            f"const p = document.querySelector('{item} progress'); return p && p.value > 0 && p.value < p.max;"))

    wait_for(started, "the upload to start", timeout=60)
    browser.execute_script(f"document.querySelector('{item} button.cancel').click()")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, item + ".cancelled"), "the cancelled mark")
    browser.save_screenshot(str(shots / "cancelled.png"))
    wait_for(lambda: not leftovers(public.files), "the partial upload to be removed")
    wait_for(lambda: not uploads_to(public, "huge.bin"), "the resumable upload deleted on the server")
    assert not pending(public, data_only=True)
    assert not (public.files / "huge.bin").exists()
    assert browser.execute_script(
        "return Object.keys(localStorage).filter((k) => k.startsWith('streamsvc.upload:')).length") == 0


def make_wav(path: Path, seconds: int = 60, rate: int = 22050) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        tone = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate))
        w.writeframes(tone * seconds)


def test_a_protected_file_plays_and_seeks_through_a_signed_link(
    browser: Any, protected: Streamsvc, shots: Path
) -> None:
    make_wav(protected.files / "clip.wav")
    assert protected.call("GET", "/files/clip.wav")[0] == 401
    code, body = protected.call("POST", "/files/clip.wav?sign=600", Authorization=f"Bearer {TOKEN}")
    assert code == 200
    url = protected.url + json.loads(body)["url"]
    browser.get(protected.url + "/healthz")  # a page of that origin, without a token
    state = browser.execute_async_script(
        """
        const [url, done] = arguments;
        const v = document.createElement('video');
        v.muted = true; v.src = url; document.body.appendChild(v);
        v.addEventListener('error', () => done({error: v.error && v.error.code}));
        v.addEventListener('canplay', () => {
          v.play().catch(() => {});
          v.addEventListener('seeked', () => done({seeked: v.currentTime, duration: v.duration}), {once: true});
          v.currentTime = 45;
        }, {once: true});
        """,
        url,
    )
    browser.save_screenshot(str(shots / "video.png"))
    assert "error" not in state, state
    assert abs(state["duration"] - 60) < 1 and abs(state["seeked"] - 45) < 1

    def logged() -> list[str]:
        text = protected.access_log.read_text() if protected.access_log.exists() else ""
        return [line for line in text.splitlines() if "/files/clip.wav?expires=&sig=" in line]

    lines = wait_for(logged, "the access log (flushed once a second)")
    assert all('" 401 ' not in line and '" 403 ' not in line for line in lines)
    assert any('" 206 ' in line or '" 200 ' in line for line in lines)
    assert TOKEN not in protected.access_log.read_text()


def test_the_dashboard_shows_a_throttled_download_pause(browser: Any, public: Streamsvc, shots: Path) -> None:
    with open(public.files / "big.bin", "wb") as f:
        f.truncate(256 * MiB)
    client = socket.create_connection(("127.0.0.1", public.port), timeout=30)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    reading = threading.Event()
    reading.set()

    def read() -> None:
        while True:
            if reading.is_set():
                try:
                    if not client.recv(256 * 1024):
                        return
                except OSError:
                    return
            else:
                time.sleep(0.05)

    threading.Thread(target=read, daemon=True).start()
    try:
        browser.get(public.url + "/ui/streams")
        row_css = "#streams tr[data-id]"
        wait_for(lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, row_css) if "/files/big.bin" in r.text],
                 "the download on the dashboard")

        def rate() -> float:
            return float(browser.execute_script(
                "return window.streamsvcLast ? window.streamsvcLast.total_rate : -1"))

        wait_for(lambda: rate() > 1e6, "a rate above 1 MB/s (throttled at 2 MiB/s)")
        browser.save_screenshot(str(shots / "dashboard-running.png"))
        reading.clear()  # the client stops reading: its window fills, the stream pauses
        wait_for(lambda: rate() == 0 and browser.execute_script(
            "const s = window.streamsvcLast.streams.find(x => x.path === '/files/big.bin');"
            "return s && s.paused_share === 1;"), "the rate to drop to 0 and the stream to show paused")
        browser.save_screenshot(str(shots / "dashboard-paused.png"))
    finally:
        client.close()


def test_an_ndjson_export_fetched_from_another_origin(
    browser: Any, public: Streamsvc, other_origin: str, shots: Path
) -> None:
    for n in range(3):
        code, _ = public.call("POST", "/tasks", json.dumps({"title": f"t{n}"}).encode(),
                              Authorization=f"Bearer {TOKEN}", **{"Content-Type": "application/json"})
        assert code == 201
    query = urllib.parse.urlencode({"url": public.url + "/tasks/stream.ndjson", "token": TOKEN})
    browser.get(f"{other_origin}/?{query}")
    text = wait_for(lambda: browser.find_element(By.ID, "out").text, "the cross-origin fetch")
    browser.save_screenshot(str(shots / "cors.png"))
    status, *lines = text.splitlines()
    assert status == "200", text
    assert [json.loads(line)["title"] for line in lines if line.strip()][-3:] == ["t0", "t1", "t2"]
