"""
Plugins: selection from C{[plugins]} and C{[plugin:NAME]}, mounting behind
the same machinery as streamsvc's own resources, and a plugin's failures.

The plugins here are objects made in the test (L{select_plugins} takes what
is "installed"); discovery from a real installed distribution is tested
with the example plugin (tests/test_plugin_example.py).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from streamsvc.app import build_site
from streamsvc.config import AuthConfig, Config, ConfigError, LimitsConfig, ServerConfig, parse_config
from streamsvc.errors import HTTPError
from streamsvc.limits import Drain
from streamsvc.plugin import (
    OWN_PATHS,
    REQUIRED,
    Plugin,
    PluginContext,
    PluginFailed,
    Setting,
    boolean,
    choice,
    integer,
    select_plugins,
)
from streamsvc.producers import IterableProducer, Outcome, send_body
from streamsvc.testing import CloseProbe, PluginSite, trickle

TOKEN = "s3cret-token"


def config_of(text: str) -> Config:
    return parse_config(text, "tap.conf")


def errors_of(text: str, available: list[Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        select_plugins(config_of(text), available)
    return str(raised.value)


class Stream(Resource):
    """GET /NAME/COUNT: COUNT chunks of 1 KiB from a generator, through send_body."""

    isLeaf = True

    def __init__(self, context: PluginContext | None = None) -> None:
        super().__init__()
        self.context = context
        self.probes: list[CloseProbe] = []
        self.ended: list[Any] = []
        self.hits = context.metrics.counter("hits", "requests") if context is not None else None

    def render_GET(self, request: Any) -> Any:
        if self.hits is not None:
            self.hits.inc()
        count = int(request.postpath[0]) if request.postpath and request.postpath[0] else 4
        probe = CloseProbe(b"x" * 1024 for _ in range(count))
        self.probes.append(probe)
        request.setHeader(b"content-type", b"application/octet-stream")
        send_body(request, IterableProducer(probe, clock=self.context.clock if self.context else None)).addCallback(
            self.ended.append
        )
        return NOT_DONE_YET


def plugin(name: str = "demo", path: str = "demo", **kwargs: Any) -> Plugin:
    return Plugin(name=name, path=path, resource=Stream, **kwargs)


class Made:
    """A plugin whose resources are kept, to look at after a request."""

    def __init__(self, **kwargs: Any) -> None:
        self.resources: list[Stream] = []
        self.contexts: list[PluginContext] = []

        def factory(context: PluginContext) -> Stream:
            self.contexts.append(context)
            self.resources.append(Stream(context))
            return self.resources[-1]

        kwargs.setdefault("name", "demo")
        kwargs.setdefault("path", "demo")
        self.plugin = Plugin(resource=factory, **kwargs)

    @property
    def resource(self) -> Stream:
        return self.resources[-1]


def with_tokens(**limits: Any) -> Config:
    return Config(auth=AuthConfig(tokens=(TOKEN,)), limits=LimitsConfig(**limits))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- selection --------------------------------------------------------------------------


def test_nothing_is_enabled_by_default_and_nothing_is_scanned(monkeypatch: Any) -> None:
    import streamsvc.plugin as module

    monkeypatch.setattr(module, "discover", lambda: pytest.fail("scanned"))
    assert select_plugins(Config()) == ()
    assert select_plugins(config_of("[plugins]\nenabled =\n")) == ()


def test_enabled_plugins_are_selected_with_their_settings() -> None:
    settings = {"depth": Setting(integer(1, 9), default=3), "mode": Setting(choice("a", "b")), "on": Setting(boolean)}
    p = plugin(settings=settings)
    other = plugin("other", "other")
    chosen = select_plugins(config_of("[plugins]\nenabled = demo\n[plugin:demo]\nmode = B\non = yes\n"), [p, other])
    assert [c.name for c in chosen] == ["demo"]
    assert dict(chosen[0].settings) == {"depth": 3, "mode": "b", "on": True}
    assert chosen[0].mount == "demo"


def test_an_installed_plugin_that_is_not_enabled_is_not_mounted(tmp_path: Any) -> None:
    config = attrs.evolve(config_of("[plugin:demo]\n"), server=ServerConfig(data_dir=str(tmp_path)))
    assert select_plugins(config, [plugin()]) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[plugins]\nenabled = nope\n",
         "tap.conf: [plugins] enabled: no plugin named 'nope' is installed (installed: demo; a plugin is a "
         "distribution that adds a module to streamsvc.plugins)"),
        ("[plugins]\nenabled = Demo\n",
         "tap.conf: [plugins] enabled = 'Demo': 'Demo' is not a plugin name (lower-case letters, digits, - and _, "
         "starting with a letter)"),
        ("[plugin:typo]\nx = 1\n", "tap.conf: [plugin:typo]: no plugin named 'typo' is installed (installed: demo)"),
        ("[plugin:a b]\n", "tap.conf: [plugin:a b]: 'a b' is not a plugin name (lower-case letters, digits, - and _, "
         "starting with a letter)"),
        ("[plugins]\nenabled = demo\n[plugin:demo]\nmode = c\n", "tap.conf: [plugin:demo] mode = 'c': expected a or b"),
        ("[plugins]\nenabled = demo\n[plugin:demo]\nmood = a\n",
         "tap.conf: [plugin:demo] unknown key 'mood' (known: mode, secret, mount)"),
        ("[plugins]\nenabled = demo\n", "tap.conf: [plugin:demo] mode is required (a or b)"),
        ("[plugins]\nenabled = demo\n[plugin:demo]\nmode = a\nsecret = no-such-thing\n",
         "tap.conf: [plugin:demo] secret: expected yes/no, true/false, on/off or 1/0"),
        ("[plugins]\nenabled = demo\n[plugin:demo]\nmode = a\nmount = /a/b\n",
         "tap.conf: [plugin:demo] mount = '/a/b': expected one path segment such as /logs (letters, digits, and "
         ". _ ~ - after the first)"),
        ("[plugins]\nenabled = demo\n[plugin:demo]\nmode = a\nmount = /files\n",
         "tap.conf: [plugin:demo]: /files is one of streamsvc's own paths; mount it elsewhere with "
         "[plugin:demo] mount = /another"),
    ],
)
def test_mistakes_are_one_line_naming_the_place(text: str, message: str) -> None:
    settings = {"mode": Setting(choice("a", "b"), doc="a or b"), "secret": Setting(boolean, default=False, secret=True)}
    assert errors_of(text, [plugin(settings=settings)]) == message


def test_every_own_path_is_refused() -> None:
    for own in sorted(OWN_PATHS - {""}):
        message = errors_of("[plugins]\nenabled = demo\n", [plugin(path=own)])
        assert f"/{own} is one of streamsvc's own paths" in message


def test_two_plugins_on_one_path_and_the_way_out() -> None:
    both = [plugin("one", "same"), plugin("two", "same")]
    assert errors_of("[plugins]\nenabled = one, two\n", both) == (
        "tap.conf: [plugins] enabled: 'one' and 'two' are both mounted at /same; move one, e.g. "
        "[plugin:two] mount = /another"
    )
    chosen = select_plugins(config_of("[plugins]\nenabled = one two\n[plugin:two]\nmount = /elsewhere\n"), both)
    assert [(c.name, c.mount) for c in chosen] == [("one", "same"), ("two", "elsewhere")]


def test_two_installed_plugins_of_one_name() -> None:
    message = errors_of("[plugins]\nenabled = demo\n", [plugin(), plugin()])
    assert message.startswith("tap.conf: [plugins] enabled: two installed plugins are named 'demo' (")


def test_a_plugin_with_a_bad_path_of_its_own_can_be_mounted_elsewhere() -> None:
    bad = plugin(path="a/b")
    assert "has the path 'a/b'" in errors_of("[plugins]\nenabled = demo\n", [bad])
    chosen = select_plugins(config_of("[plugins]\nenabled = demo\n[plugin:demo]\nmount = ab\n"), [bad])
    assert chosen[0].mount == "ab"


def test_a_secret_setting_is_never_shown() -> None:
    settings = {"password": Setting(integer(0, 1), secret=True)}
    message = errors_of("[plugins]\nenabled = demo\n[plugin:demo]\npassword = hunter2\n", [plugin(settings=settings)])
    assert "hunter2" not in message and "[plugin:demo] password:" in message


def test_a_plugin_may_not_take_the_mount_key_for_itself() -> None:
    message = errors_of("[plugins]\nenabled = demo\n", [plugin(settings={"mount": Setting(str, default="")})])
    assert "has a setting named 'mount'" in message


def test_required_is_a_marker_not_a_value() -> None:
    assert Setting(str).default is REQUIRED and repr(REQUIRED) == "REQUIRED"


# -- mounting ------------------------------------------------------------------------------


def test_a_plugin_is_guarded_by_default(tmp_path: Any) -> None:
    made = Made()
    site = PluginSite(made.plugin, tmp_path, config=with_tokens())
    refused = site.get("/demo/2")
    assert refused.code == 401 and json.loads(refused.body)["error"]
    assert refused.header("www-authenticate") is not None
    served = site.get("/demo/2", AUTH)
    assert served.code == 200 and served.body == b"x" * 2048
    root = json.loads(site.get("/").body)
    assert "/demo" in root["endpoints"]


def test_a_guarded_plugin_without_tokens_is_a_403(tmp_path: Any) -> None:
    response = PluginSite(Made().plugin, tmp_path).get("/demo/2")
    assert response.code == 403 and "[auth] tokens" in json.loads(response.body)["error"]


def test_a_public_plugin_needs_no_token(tmp_path: Any) -> None:
    response = PluginSite(Made(public=True).plugin, tmp_path).get("/demo/3")
    assert response.code == 200 and len(response.body) == 3072


def test_the_context_is_what_the_documentation_says(tmp_path: Any) -> None:
    made = Made(settings={"n": Setting(integer(0, 9), default=1)})
    site = PluginSite(made.plugin, tmp_path, settings={"n": "7"}, config=with_tokens())
    context = made.contexts[0]
    assert context.name == "demo" and dict(context.settings) == {"n": 7}
    assert context.clock is site.clock and context.reactor is site.clock
    assert context.data_dir == os.path.join(str(tmp_path), "plugins", "demo") and os.path.isdir(context.data_dir)
    assert context.chunk_size == Config().stream.chunk_size
    from streamsvc.auth import BearerGuard

    assert isinstance(context.guard(Resource()), BearerGuard)


def test_run_in_thread_runs_off_the_reactor(tmp_path: Any) -> None:
    import threading

    from twisted.internet import reactor

    made = Made()
    site = build_site(
        attrs.evolve(config_of("[plugins]\nenabled = demo\n"), server=ServerConfig(data_dir=str(tmp_path))),
        reactor=reactor, plugins=select_plugins(config_of("[plugins]\nenabled = demo\n"), [made.plugin]),
    )
    assert site is not None
    context = made.contexts[0]
    main = threading.get_ident()
    result = context.run_in_thread(threading.get_ident)
    assert isinstance(result, Deferred)
    # The job runs in a thread at once; its answer is delivered on the reactor.
    import time

    for _ in range(2000):
        reactor.iterate(0.001)  # type: ignore[attr-defined]
        if result.called:
            break
        time.sleep(0)
    assert result.called and result.result != main
    context.run_in_thread.stop()  # type: ignore[attr-defined]


def test_a_plugins_streams_are_counted_under_its_name_and_its_own_metrics_shown(tmp_path: Any) -> None:
    made = Made(public=True)
    site = PluginSite(made.plugin, tmp_path)
    assert 'streamsvc_streams_total{kind="plugin:demo",outcome="complete"} 0.0' in site.metrics()
    site.get("/demo/5")
    text = site.metrics()
    assert 'streamsvc_streams_total{kind="plugin:demo",outcome="complete"} 1.0' in text
    assert 'streamsvc_bytes_sent_total{kind="plugin:demo"} 5120.0' in text
    assert "streamsvc_plugin_demo_hits_total 1.0" in text


def test_cors_applies_to_a_plugin(tmp_path: Any) -> None:
    origin = "https://app.example"
    site = PluginSite(Made(public=True).plugin, tmp_path, config=Config(server=ServerConfig(cors_origins=(origin,))))
    response = site.get("/demo/1", {"Origin": origin})
    assert response.code == 200 and response.header("access-control-allow-origin") == origin
    preflight = site.get("/demo/1", {"Origin": origin, "Access-Control-Request-Method": "GET"}, method="OPTIONS")
    assert preflight.code == 204


def test_the_header_timeout_applies_before_a_plugin_is_reached(tmp_path: Any) -> None:
    made = Made(public=True)
    site = PluginSite(made.plugin, tmp_path, config=Config(limits=LimitsConfig(header_timeout=5)))
    conn = site.connect()
    conn.send(b"GET /demo/1 HTTP/1.1\r\nHost: x\r\n")  # the headers never end
    site.clock.advance(5.1)
    assert conn.transport.closed_by_server and made.resource.probes == []


def test_the_access_log_has_a_plugins_requests(tmp_path: Any) -> None:
    log = tmp_path / "access.log"
    site = PluginSite(Made(public=True).plugin, tmp_path, config=Config(server=ServerConfig(access_log_file=str(log))))
    site.get("/demo/1")
    site.site.access_log.flush()
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and '"GET /demo/1 HTTP/1.1" 200 1024' in lines[0]


def test_a_rate_limit_holds_a_plugins_stream(tmp_path: Any) -> None:
    made = Made(public=True)
    site = PluginSite(made.plugin, tmp_path, config=Config(limits=LimitsConfig(rate_limit=4096)))
    conn = site.connect()
    conn.request("GET", "/demo/64")
    got = trickle(conn, site.clock, nbytes=1 << 20, every=0.25, times=8)  # two seconds
    assert 6 * 1024 <= got - len(b"HTTP/1.1 200 OK") <= 12 * 1024 + 512  # about 4 KiB/s, headers aside
    conn.disconnect()


def test_a_per_client_rate_limit_is_shared_by_a_clients_plugin_streams(tmp_path: Any) -> None:
    site = PluginSite(Made(public=True).plugin, tmp_path, config=Config(limits=LimitsConfig(client_rate_limit=4096)))
    first, second = site.connect(), site.connect()  # one client address (127.0.0.1)
    first.request("GET", "/demo/64")
    second.request("GET", "/demo/64")
    got = 0
    for _ in range(8):  # two seconds
        site.clock.advance(0.25)
        got += first.read(1 << 20) + second.read(1 << 20)
    assert 6 * 1024 <= got - 2 * 200 <= 12 * 1024 + 1024  # about 4 KiB/s for both together, headers aside
    first.disconnect()
    second.disconnect()


def streaming(tmp_path: Any, config: Config | None = None) -> tuple[Made, PluginSite, Any]:
    """A public plugin streaming 100000 KiB to a client with a 4 KiB buffer that does not read."""
    made = Made(public=True)
    site = PluginSite(made.plugin, tmp_path, config=config)
    conn = site.connect(buffer_size=4096)
    conn.request("GET", "/demo/100000")
    site.clock.advance(0)
    return made, site, conn


def test_a_stalled_reader_is_cut_at_the_send_timeout_and_its_generator_closed(tmp_path: Any) -> None:
    made, site, conn = streaming(tmp_path, Config(limits=LimitsConfig(send_timeout=30)))
    site.clock.advance(0)
    assert conn.transport.producer_paused and not made.resource.probes[0].closed
    site.clock.advance(31)
    assert conn.aborted and made.resource.probes[0].closed
    assert [e.outcome for e in made.resource.ended] == [Outcome.TIMEOUT]


def test_a_disconnect_closes_the_generator_at_once(tmp_path: Any) -> None:
    made, site, conn = streaming(tmp_path)
    conn.disconnect()
    assert made.resource.probes[0].closed
    assert [e.outcome for e in made.resource.ended] == [Outcome.CLIENT_GONE]
    assert site.site.open_streams == set()


def test_a_body_over_the_limit_is_refused_before_the_plugin_sees_it(tmp_path: Any) -> None:
    made = Made(public=True)
    site = PluginSite(made.plugin, tmp_path, config=Config(limits=LimitsConfig(max_body_bytes=1024)))
    conn = site.connect()
    conn.send(b"POST /demo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    conn.read_until_quiet(site.clock)
    assert conn.response().code == 413 and made.resource.probes == []


def test_the_drain_waits_for_a_plugins_stream_then_stops_it(tmp_path: Any) -> None:
    made, site, conn = streaming(tmp_path)
    done = Drain(site.site, site.clock, 30).start()
    site.clock.advance(29)
    assert not done.called and not made.resource.probes[0].closed
    site.clock.advance(1.1)
    assert done.called and conn.aborted and made.resource.probes[0].closed
    assert [e.outcome for e in made.resource.ended] == [Outcome.SHUTDOWN]


# -- a plugin's own failures ---------------------------------------------------------------


class Failing(Resource):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.isLeaf = how != "child"

    def getChild(self, path: bytes, request: Any) -> Any:
        raise RuntimeError("no child for you")

    def render_GET(self, request: Any) -> bytes:
        if self.how == "http":
            raise HTTPError(404, "no such log")
        if self.how == "late":
            request.write(b"partial")
        raise RuntimeError("the plugin is broken")


def failing(how: str) -> Plugin:
    return Plugin(name="broken", path="broken", public=True, resource=lambda context: Failing(how))


@pytest.mark.parametrize("how", ["render", "child"])
def test_a_plugin_that_raises_gets_a_json_500_and_a_log_line_and_the_server_goes_on(
    tmp_path: Any, how: str, capture_log: Any
) -> None:
    site = PluginSite(failing(how), tmp_path)
    response = site.get("/broken/x")
    assert response.code == 500 and json.loads(response.body) == {"error": "internal server error"}
    failures = [e for e in capture_log if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["plugin"] == "broken"
    assert "the plugin is broken" in str(failures[0]["log_failure"].value) or "no child" in str(
        failures[0]["log_failure"].value
    )
    assert site.get("/healthz").code == 200


def test_a_plugin_that_raises_after_writing_has_its_connection_aborted(tmp_path: Any, capture_log: Any) -> None:
    site = PluginSite(failing("late"), tmp_path)
    conn = site.connect()
    conn.request("GET", "/broken")
    site.clock.advance(0)
    assert conn.aborted


def test_a_plugins_http_error_is_its_answer(tmp_path: Any) -> None:
    response = PluginSite(failing("http"), tmp_path).get("/broken")
    assert response.code == 404 and json.loads(response.body) == {"error": "no such log"}


def test_a_method_the_plugin_lacks_is_a_json_405(tmp_path: Any) -> None:
    response = PluginSite(failing("http"), tmp_path).get("/broken", method="DELETE")
    assert response.code == 405 and json.loads(response.body)["error"] == "method not allowed"
    assert "GET" in (response.header("allow") or "")


def test_a_factory_that_raises_fails_the_start_up_with_one_line(tmp_path: Any) -> None:
    def boom(context: PluginContext) -> Any:
        raise OSError("cannot open /var/log/x")

    with pytest.raises(PluginFailed) as raised:
        PluginSite(Plugin(name="boom", path="boom", resource=boom), tmp_path)
    assert re.fullmatch(
        r"plugin 'boom' failed to start: OSError: cannot open /var/log/x \(at test_plugin.py:\d+\)", str(raised.value)
    )
    with pytest.raises(PluginFailed) as raised:
        PluginSite(Plugin(name="none", path="none", resource=lambda context: None), tmp_path)
    assert str(raised.value) == "plugin 'none' failed to start: its resource() returned None, not an IResource"
