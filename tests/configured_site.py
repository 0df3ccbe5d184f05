"""
A streamsvc Site built from a L{Config} over C{tmp_path}, on a L{Clock},
spoken to through L{SiteConnection}: what the in-memory HTTP tests of the
app share (one request per connection, read to the end).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from streamsvc.app import build_site, prepare_data_dir
from streamsvc.config import Config, ServerConfig
from streamsvc.testing import SiteConnection


class ConfiguredSite:
    """C{server} are L{ServerConfig} fields; C{sections} the other sections of the L{Config}."""

    def __init__(
        self,
        tmp_path: Any,
        *,
        server: dict[str, Any] | None = None,
        run_blocking: Any = None,
        **sections: Any,
    ) -> None:
        self.clock = Clock()
        config = Config(server=ServerConfig(data_dir=str(tmp_path), **(server or {})), **sections)
        prepare_data_dir(config)
        self.files = tmp_path / "files"
        self.site = build_site(config, reactor=self.clock, run_blocking=run_blocking)

    def request(self, method: str, path: str, *headers: str) -> Any:
        conn = SiteConnection(self.site)
        lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        conn.read_until_quiet(self.clock)
        conn.disconnect()
        return conn.response(head=method == "HEAD")

    def get(self, path: str, *headers: str) -> Any:
        return self.request("GET", path, *headers)
