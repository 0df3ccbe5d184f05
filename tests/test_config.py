"""
Tests for L{streamsvc.config}: the INI schema, sizes, endpoints, tokens,
command-line overrides, one-line errors, and the shipped C{tap.conf}.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsvc.config import (
    DEFAULT_CONFIG_NAME,
    KNOWN_KEYS,
    S3Config,
    EventsConfig,
    FilesConfig,
    TasksConfig,
    LimitsConfig,
    AuthConfig,
    Config,
    ConfigError,
    ServerConfig,
    StreamConfig,
    apply_overrides,
    check_endpoint,
    load_config,
    parse_config,
    parse_size,
    read_tokens_file,
)

SHIPPED = Path(__file__).resolve().parent.parent / "tap.conf"

#: Token-like secrets used across tests; none may ever show up in a message.
SECRET_A = "s3cret-AAAA-token"
SECRET_B = "s3cret-BBBB-token"
SECRET_C = "s3cret-CCCC-token"


def error_of(text: str, source: str = "tap.conf") -> str:
    """The message of the ConfigError that parsing C{text} raises."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


def assert_one_line(message: str) -> None:
    assert message.strip()
    assert len(message.splitlines()) == 1, message
    assert "\n" not in message and "\r" not in message


# --- defaults and every key ---------------------------------------------------


def test_defaults() -> None:
    """Config() carries the documented built-in defaults."""
    config = Config()
    assert config.server == ServerConfig(
        listen=("tcp:8080:interface=127.0.0.1",), data_dir="./data"
    )
    assert config.stream == StreamConfig(
        chunk_size=65536, max_ranges=16, gzip=True, gzip_level=6
    )
    assert config.auth == AuthConfig(tokens=(), tokens_file=None, protect_downloads=False)
    assert DEFAULT_CONFIG_NAME == "tap.conf"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[server]\n[stream]\n[auth]\n"])
def test_empty_file_and_empty_sections_are_defaults(text: str) -> None:
    """Sections and keys left out take their defaults."""
    assert parse_config(text) == Config()


def test_each_key_parsed() -> None:
    """Every key of every section is read into its field, with its type."""
    text = """
[server]
listen = tcp:9000 tcp6:9001:interface=\\:\\:1
  unix:/tmp/streamsvc-test.sock:mode=660
data_dir = /srv/streamsvc

[stream]
chunk_size = 128KiB
max_ranges = 3
gzip = off
gzip_level = 9

[auth]
tokens = one two
tokens_file = secrets/tokens.txt
protect_downloads = true
"""
    config = parse_config(text)
    assert config == Config(
        server=ServerConfig(
            listen=("tcp:9000", "tcp6:9001:interface=\\:\\:1", "unix:/tmp/streamsvc-test.sock:mode=660"),
            data_dir="/srv/streamsvc",
        ),
        stream=StreamConfig(chunk_size=131072, max_ranges=3, gzip=False, gzip_level=9),
        auth=AuthConfig(
            tokens=("one", "two"), tokens_file="secrets/tokens.txt", protect_downloads=True
        ),
    )


def test_keys_are_case_insensitive_sections_are_not() -> None:
    """'GZIP' in [stream] is gzip; [Stream] is not [stream]."""
    assert parse_config("[stream]\nGZIP = No\nChunk_Size = 8k\n").stream == StreamConfig(
        gzip=False, chunk_size=8192
    )
    assert "unknown section [Stream]" in error_of("[Stream]\ngzip = no\n")


def test_percent_is_literal() -> None:
    """Interpolation is off: a % in a value is kept as written."""
    config = parse_config("[server]\ndata_dir = /d/%h\n")
    assert config.server.data_dir == "/d/%h"


@pytest.mark.parametrize("token", ["a%b", "tok\u00e9n", "x=y", "semi;colon"])
def test_token_outside_bearer_syntax_is_refused(token: str) -> None:
    """A token a Bearer header cannot carry is an error that does not echo the token."""
    with pytest.raises(ConfigError) as e:
        parse_config(f"[auth]\ntokens = good {token}\n")
    assert token not in str(e.value)
    assert "tokens" in str(e.value)


def test_known_keys_match_the_config_classes() -> None:
    """The parser's key table and the attrs classes name exactly the same fields."""
    classes = {
        "server": ServerConfig,
        "stream": StreamConfig,
        "auth": AuthConfig,
        "limits": LimitsConfig,
        "tasks": TasksConfig,
        "events": EventsConfig,
        "files": FilesConfig,
        "s3": S3Config,
    }
    assert list(KNOWN_KEYS) == ["server", "stream", "auth", "limits", "tasks", "events", "files", "s3", "plugins"]
    for section, cls in classes.items():
        assert KNOWN_KEYS[section] == tuple(f.name for f in attrs.fields(cls))
    # [plugins] holds the sections of the plugins too, which are not keys.
    assert KNOWN_KEYS["plugins"] == ("enabled",)


def test_plugin_sections_are_kept_raw_for_their_plugins() -> None:
    config = parse_config("[plugins]\nenabled = b, a b\n[plugin:a]\nx = 1\nY = two words\n[plugin:b]\n", "t.conf")
    assert config.plugins.enabled == ("b", "a")
    assert config.plugins.section("a") == {"x": "1", "y": "two words"}
    assert config.plugins.section("b") == {} and config.plugins.section("c") == {}
    assert config.plugins.source == "t.conf"


# --- sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [
        ("65536", 65536),
        ("0", 0),
        ("64k", 65536),
        ("64K", 65536),
        ("64KiB", 65536),
        ("64kib", 65536),
        ("64KB", 65536),
        ("64kb", 65536),
        ("1m", 1048576),
        ("1M", 1048576),
        ("1MiB", 1048576),
        ("1MB", 1048576),
        ("16MiB", 16777216),
        (" 4k ", 4096),
        ("4 KiB", 4096),
        ("1G", 1024**3),
        ("1GiB", 1024**3),
        ("2t", 2 * 1024**4),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    """Integers and binary k/m/g/t suffixes in any case, with optional iB/B."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "abc", "k", "64x", "64KiBs", "1.5M", "-4096", "+4096", "1P", "64iB", "64 K iB",
     "0x1000", "4_096", "\u0664\u0660\u0669\u0666", "64Ki", "64B"],
)
def test_parse_size_rejects(text: str) -> None:
    """Anything but digits with an optional k/m/g/t[i][B] suffix is a ValueError."""
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["k", "K", "KiB", "kb", "m", "MiB", "Mb"]))
def test_parse_size_suffix_multiplies(number: int, suffix: str) -> None:
    """A k suffix always means *1024 and an m suffix *1024*1024."""
    factor = 1024 if suffix[0] in "kK" else 1024 * 1024
    assert parse_size(f"{number}{suffix}") == number * factor


@pytest.mark.parametrize("value, size", [("4096", 4096), ("4k", 4096), ("16MiB", 16777216)])
def test_chunk_size_bounds_accepted(value: str, size: int) -> None:
    """Both ends of 4 KiB..16 MiB are allowed, in any spelling."""
    assert parse_config(f"[stream]\nchunk_size = {value}\n").stream.chunk_size == size


def test_bad_chunk_size_message() -> None:
    """A size that is not a size names file, section, key and value, and says what is expected."""
    assert error_of("[stream]\nchunk_size = abc\n") == (
        "tap.conf: [stream] chunk_size = 'abc': expected a size such as 65536 or 64KiB"
    )


# --- ranges, integers and booleans ------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("chunk_size", "4095"),
        ("chunk_size", "3k"),
        ("chunk_size", "16777217"),
        ("chunk_size", "17M"),
        ("chunk_size", "0"),
        ("max_ranges", "0"),
        ("max_ranges", "1001"),
        ("max_ranges", "-1"),
        ("gzip_level", "0"),
        ("gzip_level", "10"),
    ],
)
def test_ranges_violated(key: str, value: str) -> None:
    """Values outside their range are errors naming the key, the value and the range."""
    message = error_of(f"[stream]\n{key} = {value}\n")
    assert message.startswith(f"tap.conf: [stream] {key} = {value!r}: must be between ")


@pytest.mark.parametrize("key, value", [("max_ranges", "1"), ("max_ranges", "1000"), ("gzip_level", "1"), ("gzip_level", "9")])
def test_range_ends_accepted(key: str, value: str) -> None:
    """The ends of each integer range are themselves valid."""
    assert getattr(parse_config(f"[stream]\n{key} = {value}\n").stream, key) == int(value)


@pytest.mark.parametrize("key", ["max_ranges", "gzip_level"])
@pytest.mark.parametrize("value", ["", "ten", "1.5", "5 6", "0x5", "+5", "5_0"])
def test_integers_must_be_plain_integers(key: str, value: str) -> None:
    """Integer keys take only plain decimal integers."""
    message = error_of(f"[stream]\n{key} = {value}\n")
    assert message.startswith(f"tap.conf: [stream] {key} = {value!r}: expected an integer from ")


@pytest.mark.parametrize(
    "value, expected",
    [(v, True) for v in ["yes", "YES", "true", "True", "on", "On", "1"]]
    + [(v, False) for v in ["no", "No", "false", "FALSE", "off", "OFF", "0"]],
)
def test_booleans(value: str, expected: bool) -> None:
    """yes/no, true/false, on/off and 1/0 in any case."""
    config = parse_config(f"[stream]\ngzip = {value}\n[auth]\nprotect_downloads = {value}\n")
    assert config.stream.gzip is expected
    assert config.auth.protect_downloads is expected


@pytest.mark.parametrize("section, key", [("stream", "gzip"), ("auth", "protect_downloads")])
@pytest.mark.parametrize("value", ["", "y", "n", "2", "enabled", "yes # comment", "nope"])
def test_bad_booleans(section: str, key: str, value: str) -> None:
    """Anything else is an error, even near misses (no guessing)."""
    message = error_of(f"[{section}]\n{key} = {value}\n")
    assert message == f"tap.conf: [{section}] {key} = {value!r}: expected yes/no, true/false, on/off or 1/0"


# --- structure -----------------------------------------------------------------


@pytest.mark.parametrize("section", ["limitz", "limit", "event", "Server", "default", "auth "])
def test_unknown_section(section: str) -> None:
    """A section the parser does not know stops parsing and lists the known ones."""
    assert error_of(f"[server]\n[{section}]\nx = 1\n") == (
        f"tap.conf: unknown section [{section}] (known: server, stream, auth, limits, tasks, events, files, s3, "
        "plugins, plugin:NAME)"
    )


def test_unknown_key() -> None:
    """A key the section does not have is named, with the section's keys."""
    assert error_of("[server]\nport = 8080\n") == (
        "tap.conf: [server] unknown key 'port' (known: listen, data_dir, shutdown_timeout, metrics, access_log, access_log_file, workers, cors_origins)"
    )
    assert error_of("[auth]\ntoken = x\n") == (
        "tap.conf: [auth] unknown key 'token' (known: tokens, tokens_file, protect_downloads, protect_metrics, link_secret)"
    )
    # A key from another section is unknown here too.
    assert "[stream] unknown key 'listen'" in error_of("[stream]\nlisten = tcp:1\n")


def test_default_section_with_keys_is_an_error() -> None:
    """[DEFAULT] with keys is refused (they would leak into every section); an empty one is harmless."""
    message = error_of("[DEFAULT]\ngzip = no\n[stream]\n")
    assert message.startswith("tap.conf: [DEFAULT] gzip: ")
    assert "not allowed" in message
    assert parse_config("[DEFAULT]\n[stream]\ngzip = no\n") == Config(stream=StreamConfig(gzip=False))


def test_duplicate_key_is_one_line() -> None:
    """configparser's duplicate-option error becomes one line with the line number, section and key."""
    message = error_of("[stream]\ngzip = yes\nGzip = no\n")
    assert message == "tap.conf: line 3: option 'gzip' in section 'stream' already exists"


def test_duplicate_section_is_one_line() -> None:
    """A section given twice is an error rather than a silent merge."""
    message = error_of("[stream]\ngzip = yes\n[server]\n[stream]\n")
    assert message == "tap.conf: line 4: section 'stream' already exists"


@pytest.mark.parametrize(
    "text, lineno",
    [
        (f"tokens = {SECRET_A}\n[auth]\n", 1),
        (f"[auth]\ntokens = x\n{SECRET_A}\n", 3),
        (f"[auth\ntokens = {SECRET_A}\n", 1),
    ],
)
def test_syntax_errors_are_one_line_without_the_line(text: str, lineno: int) -> None:
    """Lines configparser cannot read give their number, never their text (it may be a token)."""
    message = error_of(text)
    assert_one_line(message)
    assert message.startswith(f"tap.conf: line {lineno}: ")
    assert SECRET_A not in message


# --- endpoints -------------------------------------------------------------------


GOOD_ENDPOINTS = [
    "tcp:8080",
    "tcp:0:interface=127.0.0.1",
    "tcp:8080:interface=127.0.0.1:backlog=100",
    "tcp6:8080",
    "tcp6:port=8080:interface=\\:\\:1",
    "unix:/tmp/streamsvc.sock",
    "unix:/run/streamsvc.sock:mode=660:lockfile=1",
]

BAD_ENDPOINTS = [
    "tcp:notaport",
    "nonsense:1",
    "",
    "tcp",
    "tcp:8080:bogus=1",
    "tcp:70000",
    "tcp:-1",
    "unix:/x.sock:mode=abc",
    "ssl:8443:privateKey=/nonexistent/streamsvc-key.pem",
]


@pytest.mark.parametrize("description", GOOD_ENDPOINTS)
def test_good_endpoints(description: str) -> None:
    """tcp, tcp6 and unix endpoint strings pass, in a file and on the command line."""
    check_endpoint(description)
    assert parse_config(f"[server]\nlisten = {description}\n").server.listen == (description,)
    assert apply_overrides(Config(), listen=[description]).server.listen == (description,)


@pytest.mark.parametrize("description", BAD_ENDPOINTS)
def test_check_endpoint_rejects(description: str) -> None:
    """Strings Twisted cannot build a server endpoint from give a one-line ValueError."""
    with pytest.raises(ValueError) as info:
        check_endpoint(description)
    assert_one_line(str(info.value))


@pytest.mark.parametrize(
    "description, says",
    [
        ("18110", "not an endpoint string: did you mean tcp:18110?"),
        ("127.0.0.1:8080", "did you mean tcp:8080:interface=127.0.0.1?"),
        ("[::1]:8080", "did you mean tcp6:8080:interface=\\:\\:1?"),
        ("tcp:abc", "tcp: 'abc' is not a number"),
        ("tcp:80:interfac=1", "tcp: unknown option 'interfac' (known: port, interface, backlog)"),
        ("nonsense:1", "unknown endpoint type 'nonsense'"),
        ("tcp", "tcp: the port is missing (tcp:PORT)"),
        ("unix:/x.sock:mode=abc", "unix: 'abc' is not a number"),
        ("ssl:8443:privateKey=/nonexistent/k.pem", "ssl: cannot read '/nonexistent/k.pem'"),
    ],
)
def test_endpoint_errors_name_the_part_and_help(description: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        check_endpoint(description)
    assert says in str(info.value)
    assert_one_line(str(info.value))


@pytest.mark.parametrize("description", [d for d in BAD_ENDPOINTS if d])
def test_bad_endpoint_in_file(description: str) -> None:
    """A bad endpoint in [server] listen names the file, section, key and endpoint."""
    message = error_of(f"[server]\nlisten = {description}\n")
    assert_one_line(message)
    assert message.startswith(f"tap.conf: [server] listen = {description!r}: not a server endpoint: ")


def test_bad_endpoint_among_good_ones_is_named() -> None:
    """With several endpoints, the message singles out the bad one."""
    message = error_of("[server]\nlisten = tcp:8080 nonsense:1 tcp:8081\n")
    assert "'nonsense:1' is not a server endpoint: " in message
    assert "nonsense" in message.split("is not a server endpoint:")[1]


def test_empty_listen_is_an_error() -> None:
    """listen must name at least one endpoint."""
    assert error_of("[server]\nlisten =\n").startswith("tap.conf: [server] listen = '': expected one or more")


@pytest.mark.parametrize("description", BAD_ENDPOINTS)
def test_bad_endpoint_on_command_line(description: str) -> None:
    """A bad --listen is a ConfigError naming the option and the value."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), listen=["tcp:8080", description])
    message = str(info.value)
    assert_one_line(message)
    assert message.startswith(f"--listen {description!r}: ")


# --- tokens -------------------------------------------------------------------------


def test_tokens_separated_by_commas_and_whitespace() -> None:
    """Commas, spaces, tabs and continuation lines all separate tokens; repeats are dropped."""
    text = "[auth]\ntokens = a,b , c\td,,e\n  f, a\n\n  g\n"
    assert parse_config(text).auth.tokens == ("a", "b", "c", "d", "e", "f", "g")
    assert parse_config("[auth]\ntokens =\n").auth.tokens == ()
    assert parse_config("[auth]\ntokens = , ,\n").auth.tokens == ()


def test_parse_config_does_not_read_tokens_file(tmp_path: Path) -> None:
    """parse_config only records tokens_file, as written; even a missing file is fine there."""
    config = parse_config("[auth]\ntokens_file = /nonexistent/tokens.txt\n")
    assert config.auth.tokens_file == "/nonexistent/tokens.txt"
    assert config.auth.tokens == ()


def test_tokens_file_relative_to_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    tokens_file is found next to the config file whatever the working
    directory; comments, blank lines and whitespace are skipped, and its tokens
    follow those of [auth] tokens without repeats.
    """
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tokens.txt").write_text(
        f"# deploy tokens\n\n  {SECRET_B}  \n\t# indented comment\n{SECRET_A}\n{SECRET_C}\n\n"
    )
    (etc / "x.conf").write_text(
        f"[auth]\ntokens = {SECRET_A}\ntokens_file = tokens.txt\nprotect_downloads = yes\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "tokens.txt").write_text("wrong-file\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(str(etc / "x.conf"), required=True)
    assert config.auth.tokens == (SECRET_A, SECRET_B, SECRET_C)
    assert config.auth.tokens_file == str(etc / "tokens.txt")
    assert config.auth.protect_downloads is True


def test_tokens_file_with_relative_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config named by a relative path still finds its tokens file beside it."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "t").write_text("tok\n")
    (tmp_path / "conf" / "s.conf").write_text("[auth]\ntokens_file = t\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("conf/s.conf", required=True).auth.tokens == ("tok",)


def test_absolute_tokens_file(tmp_path: Path) -> None:
    """An absolute tokens_file is used as is."""
    (tmp_path / "abs.txt").write_text("abs-token\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.conf").write_text(f"[auth]\ntokens_file = {tmp_path / 'abs.txt'}\n")
    assert load_config(str(tmp_path / "sub" / "c.conf"), required=True).auth.tokens == ("abs-token",)


def test_read_tokens_file(tmp_path: Path) -> None:
    """read_tokens_file returns the tokens in file order; a missing file names its path."""
    path = tmp_path / "t.txt"
    path.write_text("\ufeffone\r\ntwo\r\n# three\r\none\r\n")
    assert read_tokens_file(str(path)) == ("one", "two")
    with pytest.raises(ConfigError) as info:
        read_tokens_file(str(tmp_path / "missing.txt"))
    assert str(info.value) == f"{tmp_path / 'missing.txt'}: no such file"


def test_tokens_never_in_repr() -> None:
    """Neither repr nor str of a Config (or its AuthConfig) shows a token."""
    config = parse_config(f"[auth]\ntokens = {SECRET_A}, {SECRET_B}\n")
    assert config.auth.tokens == (SECRET_A, SECRET_B)
    for text in (repr(config), str(config), repr(config.auth), str(config.auth)):
        assert "s3cret" not in text
    assert "tokens_file=None" in repr(config.auth)  # the rest of the repr is still there


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tap.conf"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "conf, tokens_file",
    [
        # A tokens file that does not exist.
        (f"[auth]\ntokens = {SECRET_A}\ntokens_file = nope/{SECRET_B}.txt\n", None),
        # A tokens file that is a directory.
        (f"[auth]\ntokens = {SECRET_A}\ntokens_file = .\n", None),
        # A tokens file with two tokens on one line.
        (f"[auth]\ntokens = {SECRET_A}\ntokens_file = t.txt\n", f"{SECRET_B} {SECRET_C}\n"),
        # A tokens file that is not UTF-8.
        (f"[auth]\ntokens = {SECRET_A}\ntokens_file = t.txt\n", None),
        # A bad value next to tokens.
        (f"[auth]\ntokens = {SECRET_A}\nprotect_downloads = {SECRET_A[:3]}\n", None),
        # An unknown key next to tokens.
        (f"[auth]\ntokens = {SECRET_A}\ntokenz = x\n", None),
        # A duplicated tokens key.
        (f"[auth]\ntokens = {SECRET_A}\ntokens = {SECRET_B}\n", None),
        # protect_downloads with an empty tokens file.
        ("[auth]\ntokens_file = t.txt\nprotect_downloads = yes\n", "# none yet\n"),
    ],
)
def test_tokens_never_in_error_messages(tmp_path: Path, conf: str, tokens_file: str | None) -> None:
    """Whatever goes wrong in [auth] or its tokens file, no token (nor part of one) is in the message."""
    if tokens_file is not None:
        (tmp_path / "t.txt").write_text(tokens_file)
    elif "t.txt" in conf:
        (tmp_path / "t.txt").write_bytes(SECRET_B.encode() + b"\n\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(write_conf(tmp_path, conf), required=True)
    message = str(info.value)
    assert_one_line(message)
    assert "AAAA" not in message and "CCCC" not in message
    assert SECRET_B not in message.replace(f"{SECRET_B}.txt", "")  # the path may carry the name


def test_bad_tokens_file_names_paths(tmp_path: Path) -> None:
    """A missing tokens file names the config, the key, the value and the resolved path."""
    path = write_conf(tmp_path, "[auth]\ntokens_file = missing.txt\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    assert str(info.value) == (
        f"{path}: [auth] tokens_file = 'missing.txt': {tmp_path / 'missing.txt'}: no such file"
    )


def test_protect_downloads_without_tokens_is_an_error(tmp_path: Path) -> None:
    """protect_downloads = yes with no token anywhere would lock everyone out: refused."""
    path = write_conf(tmp_path, "[auth]\nprotect_downloads = yes\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    message = str(info.value)
    assert message.startswith(f"{path}: [auth] protect_downloads = yes needs at least one token")
    # parse_config alone does not judge it: a tokens_file could have supplied some.
    assert parse_config("[auth]\nprotect_downloads = yes\n").auth.protect_downloads is True
    # With one token it is fine.
    path = write_conf(tmp_path, "[auth]\nprotect_downloads = yes\ntokens = t\n")
    assert load_config(path, required=True).auth.tokens == ("t",)


# --- files ----------------------------------------------------------------------------


def test_missing_required_file(tmp_path: Path) -> None:
    """A --config file that does not exist is an error naming it."""
    missing = str(tmp_path / "nope" / "x.conf")
    with pytest.raises(ConfigError) as info:
        load_config(missing, required=True)
    assert str(info.value) == f"{missing}: no such file"


def test_missing_optional_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./tap.conf and no --config: the built-in defaults."""
    monkeypatch.chdir(tmp_path)
    assert load_config(None, required=False) == Config()


def test_optional_file_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """./tap.conf is read when no --config is given, and errors name it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tap.conf").write_text("[stream]\ngzip_level = 1\n")
    assert load_config(None, required=False).stream.gzip_level == 1
    (tmp_path / "tap.conf").write_text("[stream]\ngzip_level = 11\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, required=False)
    assert str(info.value).startswith("tap.conf: [stream] gzip_level = '11': ")


def test_unreadable_optional_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ./tap.conf that exists but cannot be read is not silently skipped."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tap.conf").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(None, required=False)
    assert str(info.value).startswith("tap.conf: cannot read config file: ")


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    """A config that is not UTF-8 gives the line of the first bad byte; a BOM is accepted."""
    path = tmp_path / "c.conf"
    path.write_bytes(b"[stream]\ngzip = no\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), required=True)
    assert str(info.value) == f"{path}: line 3: config file is not UTF-8 text"
    path.write_bytes(b"\xef\xbb\xbf[stream]\ngzip = no\n")
    assert load_config(str(path), required=True).stream.gzip is False


# --- overrides -----------------------------------------------------------------------------


def test_overrides_replace_listen_and_data_dir() -> None:
    """--listen replaces the whole list and --data-dir the directory; the input is unchanged."""
    base = parse_config("[server]\nlisten = tcp:1 tcp:2\ndata_dir = fromfile\n[stream]\ngzip = no\n")
    config = apply_overrides(base, listen=["tcp:3", "unix:/tmp/s.sock"], data_dir="/cli")
    assert config.server == ServerConfig(listen=("tcp:3", "unix:/tmp/s.sock"), data_dir="/cli")
    assert config.stream == base.stream and config.auth == base.auth
    assert base.server == ServerConfig(listen=("tcp:1", "tcp:2"), data_dir="fromfile")


@pytest.mark.parametrize("listen", [None, [], ()])
def test_no_listen_override_keeps_file(listen: list[str] | None) -> None:
    """Without --listen (None or empty) the file's list stays."""
    base = parse_config("[server]\nlisten = tcp:1\n")
    assert apply_overrides(base, listen=listen) == base
    assert apply_overrides(base, listen=listen, data_dir=None) == base


def test_empty_data_dir_override_is_an_error() -> None:
    """--data-dir '' is refused, naming the option."""
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), data_dir="")
    assert str(info.value).startswith("--data-dir '': ")


@pytest.mark.parametrize("key", ["data_dir", "tokens_file"])
def test_empty_paths_in_file_are_errors(key: str) -> None:
    """data_dir and tokens_file, when present, must name a path."""
    section = "server" if key == "data_dir" else "auth"
    assert error_of(f"[{section}]\n{key} =\n").startswith(f"tap.conf: [{section}] {key} = '': expected a path")


# --- every error, one line, located --------------------------------------------------------


@pytest.mark.parametrize(
    "text, section, key",
    [
        ("[server]\nlisten = tcp:notaport\n", "server", "listen"),
        ("[server]\nlisten =\n", "server", "listen"),
        ("[server]\ndata_dir =\n", "server", "data_dir"),
        ("[server]\nport = 1\n", "server", "port"),
        ("[stream]\nchunk_size = 1\n", "stream", "chunk_size"),
        ("[stream]\nchunk_size = big\n", "stream", "chunk_size"),
        ("[stream]\nmax_ranges = many\n", "stream", "max_ranges"),
        ("[stream]\ngzip = maybe\n", "stream", "gzip"),
        ("[stream]\ngzip_level = 99\n", "stream", "gzip_level"),
        ("[stream]\nchunk_size = 64k\n  more\n", "stream", "chunk_size"),
        ("[auth]\nprotect_downloads = sure\n", "auth", "protect_downloads"),
        ("[auth]\ntokens_file =\n", "auth", "tokens_file"),
        ("[DEFAULT]\nlisten = tcp:1\n", "DEFAULT", "listen"),
        ("[stream]\ngzip = 1\ngzip = 0\n", "stream", "gzip"),
    ],
)
def test_every_error_is_one_line_naming_file_section_key(text: str, section: str, key: str) -> None:
    """Each value error is a single line that names the file, the section and the key."""
    message = error_of(text, source="/etc/streamsvc/tap.conf")
    assert_one_line(message)
    assert message.startswith("/etc/streamsvc/tap.conf: ")
    assert section in message
    assert key in message


@given(st.text(max_size=200))
def test_any_text_parses_or_gives_one_line_error(text: str) -> None:
    """Whatever the text, parse_config returns a Config or raises a one-line ConfigError."""
    try:
        config = parse_config(text, "fuzz.conf")
    except ConfigError as e:
        assert_one_line(str(e))
        assert str(e).startswith("fuzz.conf: ")
    else:
        assert isinstance(config, Config)


def test_config_error_is_a_value_error() -> None:
    """Callers may catch ConfigError as ValueError."""
    assert issubclass(ConfigError, ValueError)


# --- the shipped tap.conf ------------------------------------------------------------------


def test_shipped_tap_conf_is_the_defaults() -> None:
    """The example tap.conf, as shipped, parses to exactly the built-in defaults."""
    assert parse_config(SHIPPED.read_text(encoding="utf-8"), str(SHIPPED)) == Config()


def documented_keys(text: str) -> dict[str, set[str]]:
    """Section -> keys set or shown commented out (`#key = ...`) in it."""
    found: dict[str, set[str]] = {}
    section = None
    for line in text.splitlines():
        header = re.fullmatch(r"\[([^\]]+)\]\s*", line)
        if header:
            section = header.group(1)
            found.setdefault(section, set())
            continue
        assignment = re.fullmatch(r"[#;]?\s*([a-z_]+)\s*=.*", line)
        if assignment and section is not None:
            found[section].add(assignment.group(1))
    return found


def test_shipped_tap_conf_documents_every_key() -> None:
    """Every section and key the parser knows appears in tap.conf, in its section, under a comment."""
    text = SHIPPED.read_text(encoding="utf-8")
    documented = documented_keys(text)
    assert set(documented) == set(KNOWN_KEYS)
    for section, keys in KNOWN_KEYS.items():
        assert set(keys) <= documented[section], section
    lines = text.splitlines()
    starts = {m: i for i, l in enumerate(lines) if (m := (re.fullmatch(r"\[([^\]]+)\]\s*", l) or [None, None])[1])}
    for section, keys in KNOWN_KEYS.items():
        after = [i for i in starts.values() if i > starts[section]]
        end = min(after, default=len(lines))
        for key in keys:
            [index] = [i for i in range(starts[section], end) if re.match(rf"#?{key}\s*=", lines[i])]
            assert lines[index - 1].startswith("# Default:") or lines[index - 2].startswith("# Default:"), key
    # The secrets are left commented out.
    assert re.search(r"^#tokens\s*=", text, re.M) and re.search(r"^#tokens_file\s*=", text, re.M)


# --- [limits] -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected", [("0", 0), ("1MiB", 1024 * 1024), ("512k", 512 * 1024), ("64M", 64 * 1024 * 1024)]
)
def test_max_body_bytes(value: str, expected: int) -> None:
    """[limits] max_body_bytes takes a size from 0 (no body at all) to 64 MiB."""
    assert parse_config(f"[limits]\nmax_body_bytes = {value}\n").limits.max_body_bytes == expected


@pytest.mark.parametrize("value", ["65M", "1G", "-1", "lots"])
def test_max_body_bytes_out_of_range(value: str) -> None:
    """A size over 64 MiB or no size at all is a one-line error naming the key."""
    message = error_of(f"[limits]\nmax_body_bytes = {value}\n")
    assert message.startswith(f"tap.conf: [limits] max_body_bytes = {value!r}: ")


@pytest.mark.parametrize("value", ["-1", "3601", "1.5", "soon"])
def test_body_timeout_out_of_range(value: str) -> None:
    """[limits] body_timeout is whole seconds from 0 (off) to 3600."""
    message = error_of(f"[limits]\nbody_timeout = {value}\n")
    assert message.startswith(f"tap.conf: [limits] body_timeout = {value!r}: ")


def test_body_timeout() -> None:
    """A valid body_timeout is kept as given."""
    assert parse_config("[limits]\nbody_timeout = 15\n").limits.body_timeout == 15


# --- [tasks] store = postgresql ---------------------------------------------------------


def test_postgresql_store_needs_exactly_one_dsn_and_never_shows_it(tmp_path: Path) -> None:
    secret = "postgresql://u:pa55-SECRET@db:5432/t"
    conf = tmp_path / "tap.conf"
    conf.write_text("[tasks]\nstore = postgresql\n")
    with pytest.raises(ConfigError, match=r"store = postgresql needs dsn \(or dsn_file\)"):
        load_config(str(conf), required=True)
    (tmp_path / "db.dsn").write_text(f"# the shared database\n\n{secret}\n")
    conf.write_text(f"[tasks]\nstore = postgresql\ndsn = {secret}\ndsn_file = db.dsn\n")
    with pytest.raises(ConfigError, match="not both") as info:
        load_config(str(conf), required=True)
    assert "SECRET" not in str(info.value)
    conf.write_text("[tasks]\nstore = postgresql\ndsn_file = db.dsn\n")
    config = load_config(str(conf), required=True)
    assert config.tasks.dsn == secret and config.tasks.dsn_file == str(tmp_path / "db.dsn")
    assert "SECRET" not in repr(config)
    conf.write_text("[tasks]\nstore = postgresql\ndsn_file = missing.dsn\n")
    with pytest.raises(ConfigError, match="missing.dsn.*no such file"):
        load_config(str(conf), required=True)
    assert "SECRET" not in error_of(f"[tasks]\ndsn = {secret}\npool_size = 0\n")
    assert error_of("[tasks]\nstore = mysql\n") == "tap.conf: [tasks] store = 'mysql': expected sqlite or postgresql"


def test_sqlite_stays_the_default_and_ignores_no_dsn() -> None:
    assert parse_config("").tasks.store == "sqlite"
    assert parse_config("[tasks]\nstatement_timeout = 5\npool_size = 3\n").tasks == TasksConfig(
        statement_timeout=5, pool_size=3
    )


# --- [files] store and [s3] ------------------------------------------------------------


def test_s3_secret_key_file_is_read_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "s3-secret").write_text("# the key\nvery-secret-key-123\n")
    conf = tmp_path / "tap.conf"
    conf.write_text("[files]\nstore = s3\n[s3]\nbucket = my-bucket\naccess_key = AK\nsecret_key_file = s3-secret\n"
                    "endpoint = http://127.0.0.1:8333\nprefix = /a/b/\n")
    config = load_config(str(conf), required=True)
    assert config.s3.secret_key == "very-secret-key-123"
    assert config.s3.prefix == "a/b/" and config.s3.part_size == 8 * 1024 * 1024
    assert "very-secret-key-123" not in repr(config)


@pytest.mark.parametrize("body, expected", [
    ("[files]\nstore = s3\n[s3]\naccess_key = AK\nsecret_key = SECRETVALUE\n", "needs [s3] bucket"),
    ("[files]\nstore = s3\n[s3]\nbucket = b-1\naccess_key = AK\n", "needs [s3] secret_key or secret_key_file"),
    ("[s3]\nsecret_key = SECRETVALUE\nsecret_key_file = f\n", "give secret_key or secret_key_file, not both"),
    ("[s3]\nsecret_key_file = nowhere\n", "secret_key_file = 'nowhere': no such file"),
    ("[s3]\nendpoint = ftp://x\nsecret_key = SECRETVALUE\n", "expected a URL"),
    ("[s3]\nbucket = Not_A_Bucket\n", "expected an S3 bucket name"),
    ("[s3]\npart_size = 4MiB\n", "from 5MiB to 5GiB"),
    ("[s3]\naddressing = sideways\n", "expected path or virtual"),
    ("[files]\nstore = nfs\n", "expected local or s3"),
])
def test_s3_config_errors_are_one_line_without_the_secret(tmp_path: Path, body: str, expected: str) -> None:
    conf = tmp_path / "tap.conf"
    conf.write_text(body)
    with pytest.raises(ConfigError) as raised:
        load_config(str(conf), required=True)
    message = str(raised.value)
    assert expected in message and "\n" not in message, message
    assert "SECRETVALUE" not in message
