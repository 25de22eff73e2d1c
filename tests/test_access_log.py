"""Access log formats, JSON logs and --log-config."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgiserve.config import Config, ConfigError
from asgiserve.logging import (
    DEFAULT_ACCESS_LOG_FORMAT,
    AccessLogFormatError,
    JSONFormatter,
    LogConfigError,
    compile_access_format,
    configure_logging,
    load_log_config,
    make_access_log,
)
from tests.conftest import start_cli

SCOPE: dict[str, Any] = {
    "type": "http",
    "http_version": "1.1",
    "method": "GET",
    "scheme": "https",
    "raw_path": b"/items/caf%C3%A9",
    "query_string": b"page=2",
    "client": ("203.0.113.7", 51234),
    "headers": [(b"user-agent", b"curl/8.0"), (b"x-multi", b"a"), (b"x-multi", b"b")],
}
RESPONSE_HEADERS = [(b"Content-Type", b"text/plain"), (b"x-request-id", b"abc")]


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What the access logger emits, captured on a handler of our own."""
    logger = logging.getLogger("asgiserve.access")
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Capture()
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield captured
    logger.handlers[:], logger.level, logger.propagate = saved


def log_line(fmt: str, records: list[logging.LogRecord], scope: dict[str, Any] = SCOPE) -> str:
    clock = iter([10.0125]).__next__
    access_log = make_access_log(clock, fmt)
    assert access_log is not None
    access_log(scope, 200, 13, 10.0, RESPONSE_HEADERS)
    return records[-1].getMessage()


# -- the format --------------------------------------------------------------------------------


def test_default_format_is_the_classic_line(records: list[logging.LogRecord]) -> None:
    assert (
        log_line(DEFAULT_ACCESS_LOG_FORMAT, records)
        == '203.0.113.7:51234 - "GET /items/caf%C3%A9?page=2 HTTP/1.1" 200 13 12.5ms'
    )


def test_named_fields(records: list[logging.LogRecord]) -> None:
    fmt = "{client_host} {client_port} {method} {scheme} {path} {query} {protocol} {status}"
    assert log_line(fmt, records) == "203.0.113.7 51234 GET https /items/caf%C3%A9 page=2 1.1 200"


def test_request_and_response_headers(records: list[logging.LogRecord]) -> None:
    fmt = "{User-Agent}i {x-multi}i {content-type}o {X-Request-Id}o {referer}i {etag}o"
    assert log_line(fmt, records) == "curl/8.0 a, b text/plain abc - -"


def test_braces_and_percent_signs_are_literal(records: list[logging.LogRecord]) -> None:
    assert log_line("{{status}} 100% {status}", records) == "{status} 100% 200"


def test_a_known_field_wins_over_a_header_suffix(records: list[logging.LogRecord]) -> None:
    # "{status}ok": the status field followed by "ok", not a response header named "status".
    assert log_line("{status}ok", records) == "200ok"


def test_request_controlled_text_is_escaped(records: list[logging.LogRecord]) -> None:
    scope = {**SCOPE, "headers": [(b"user-agent", b"evil\r\nINFO: forged")]}
    assert log_line("{user-agent}i", records, scope) == "evil\\x0d\\x0aINFO: forged"


def test_missing_client_is_a_dash(records: list[logging.LogRecord]) -> None:
    assert log_line("{client} {client_host}", records, {**SCOPE, "client": None}) == "- -"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("{nope}", "unknown field {nope}"),
        ("{status", "unclosed"),
        ("status}", "single '}'"),
        ("{bad header}i", "unknown field"),
    ],
)
def test_bad_formats_are_rejected(fmt: str, message: str) -> None:
    with pytest.raises(AccessLogFormatError, match=message):
        compile_access_format(fmt)
    with pytest.raises(ConfigError, match="--access-log-format"):
        Config.from_options("x:y", access_log_format=fmt)


def test_access_log_is_none_when_the_logger_is_off() -> None:
    logger = logging.getLogger("asgiserve.access")
    saved = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        assert make_access_log(lambda: 0.0) is None
    finally:
        logger.setLevel(saved)


@pytest.mark.usefixtures("backend")
def test_server_logs_response_headers(serve: Any, records: list[logging.LogRecord]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain"), (b"x-trace", b"t-1")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"made"})

    server = serve(
        app, access_log=True, access_log_format="{method} {target} {status} {bytes} {x-trace}o"
    )
    httpx.post(f"{server.url}/new?x=1", content=b"")
    server.stop()
    assert [r.getMessage() for r in records] == ["POST /new?x=1 201 4 t-1"]


# -- JSON ----------------------------------------------------------------------------------------


def test_json_access_line_has_the_fields_by_name(records: list[logging.LogRecord]) -> None:
    log_line(
        "{client} {method} {status} {bytes} {duration_ms} {user-agent}i {x-request-id}o", records
    )
    data = json.loads(JSONFormatter().format(records[-1]))
    assert data["logger"] == "asgiserve.access"
    assert data["level"] == "INFO"
    assert data["time"].endswith("Z")
    assert data["client"] == "203.0.113.7:51234"
    assert data["status"] == 200 and data["bytes"] == 13
    assert data["duration_ms"] == pytest.approx(12.5)
    assert data["request.user-agent"] == "curl/8.0"
    assert data["response.x-request-id"] == "abc"
    assert data["message"] == "203.0.113.7:51234 GET 200 13 12.5 curl/8.0 abc"


def test_json_error_line_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "asgiserve.error", logging.ERROR, "", 0, "failed %s", ("x",), sys.exc_info()
        )
    data = json.loads(JSONFormatter().format(record))
    assert data["message"] == "failed x"
    assert data["level"] == "ERROR"
    assert "ValueError: boom" in data["exc_info"]


def test_cli_json_logs(tmp_path: Path) -> None:
    server = start_cli("tests.apps:app", "--log-format", "json")
    try:
        httpx.get(f"{server.url}/", headers={"user-agent": "json-test"})
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "asgiserve.access"]
    assert access and access[0]["status"] == 200
    assert access[0]["protocol"] == "1.1"
    assert any("running on" in line["message"] for line in lines)


def test_cli_text_logs_are_not_coloured_without_a_tty() -> None:
    server = start_cli("tests.apps:app")
    try:
        httpx.get(f"{server.url}/")
    finally:
        server.stop()
    assert "\033[" not in server.output()
    assert '"GET / HTTP/1.1" 200' in server.output()


# -- --log-config --------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    loggers = ("asgiserve.error", "asgiserve.access", "asgiserve.asgi", "custom", "")
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
            logging.getLogger(name).disabled,
        )
        for name in loggers
    }
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate, logger.disabled = (
            handlers,
            level,
            propagate,
            disabled,
        )


DICT_CONFIG = {
    "version": 1,
    "formatters": {"plain": {"format": "CUSTOM %(name)s %(message)s"}},
    "handlers": {
        "mem": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {"asgiserve.access": {"handlers": ["mem"], "level": "INFO", "propagate": False}},
}


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_files_are_applied(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "json":
        path = tmp_path / "log.json"
        path.write_text(json.dumps(DICT_CONFIG))
    elif kind == "yaml":
        yaml = pytest.importorskip("yaml")
        path = tmp_path / "log.yaml"
        path.write_text(yaml.safe_dump(DICT_CONFIG))
    else:
        path = tmp_path / "log.ini"
        path.write_text(
            textwrap.dedent(
                """
                [loggers]
                keys=root,access
                [handlers]
                keys=out
                [formatters]
                keys=plain
                [logger_root]
                handlers=
                [logger_access]
                qualname=asgiserve.access
                handlers=out
                level=INFO
                propagate=0
                [handler_out]
                class=StreamHandler
                formatter=plain
                args=(sys.stdout,)
                [formatter_plain]
                format=CUSTOM %(name)s %(message)s
                """
            )
        )
    configure_logging("info", access_log=True, log_config=str(path))
    logging.getLogger("asgiserve.access").info("hello")
    out = capsys.readouterr()
    assert "CUSTOM asgiserve.access hello" in out.out
    # Our other logger kept working (the file did not disable it), with no handler of ours:
    # the file replaces our setup, so its lines go to the root logger's handlers.
    error = logging.getLogger("asgiserve.error")
    assert not error.disabled and error.propagate and error.handlers == []


@pytest.mark.usefixtures("restore_logging")
def test_yaml_without_pyyaml_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.yml"
    path.write_text("version: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(LogConfigError, match="PyYAML"):
        load_log_config(str(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", "log.*bad.json"),
        ("list.json", "[1, 2]", "expected a mapping"),
        (
            "handlers.json",
            json.dumps({"version": 1, "loggers": {"x": {"handlers": ["nope"]}}}),
            "configure logger 'x'",
        ),
        ("missing.ini", None, "no such file"),
    ],
)
def test_bad_log_config_files_are_reported(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(LogConfigError, match=message):
        load_log_config(str(path))


def test_cli_rejects_a_bad_log_config(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import ROOT, _env

    path = tmp_path / "bad.json"
    path.write_text("{")
    result = subprocess.run(
        [sys.executable, "-m", "asgiserve", "tests.apps:app", "--log-config", str(path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "bad.json" in result.stderr


def test_json_formatter_output_is_one_line() -> None:
    record = logging.LogRecord("asgiserve.error", logging.INFO, "", 0, "a\nb", None, None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.emit(record)
    assert stream.getvalue().count("\n") == 1


# -- writing: one write per event loop iteration -------------------------------------------------


class Writes:
    """A stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    writes = Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    loggers = [logging.getLogger(n) for n in ("asgiserve.error", "asgiserve.access")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    configure_logging("info", access_log=True)
    yield writes
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_access_lines_of_one_loop_iteration_are_written_together(stream: Writes) -> None:
    async def main() -> None:
        log = make_access_log(asyncio.get_running_loop().time)
        assert log is not None
        for _ in range(3):
            log(SCOPE, 200, 13, 0.0)
        assert stream.writes == []  # not yet: at the end of this iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert len(stream.writes) == 1
    assert stream.writes[0].count("\n") == 3
    assert stream.writes[0].startswith('INFO:     203.0.113.7:51234 - "GET /items/caf%C3%A9?page=2')


def test_an_error_line_comes_after_the_access_lines_before_it(stream: Writes) -> None:
    async def main() -> None:
        log = make_access_log(asyncio.get_running_loop().time)
        assert log is not None
        log(SCOPE, 200, 13, 0.0)
        logging.getLogger("asgiserve.error").error("after the request")

    asyncio.run(main())
    text = "".join(stream.writes)
    assert text.index("GET /items") < text.index("after the request")


def test_a_logging_setup_changed_later_is_noticed(stream: Writes) -> None:
    log = make_access_log(lambda: 0.0)  # made with our own handler in place
    assert log is not None
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("asgiserve.access")
    logger.addHandler(Capture())
    log(SCOPE, 204, 0, 0.0)  # now through the logging machinery, to both handlers
    assert captured[-1].getMessage().endswith('" 204 0 0.0ms')
    assert any('" 204 0 0.0ms' in write for write in stream.writes)


def test_json_lines_from_our_handler_match_the_formatter(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]
) -> None:
    fmt = "{client} {method} {status} {bytes} {duration_ms} {user-agent}i {x-request-id}o"
    log_line(fmt, records)  # the record path (a handler of the test's own)
    expected = json.loads(JSONFormatter().format(records[-1]))
    writes = Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    configure_logging("info", access_log=True, log_format="json")

    async def main() -> None:
        clock = iter([10.0125]).__next__
        log = make_access_log(clock, fmt)  # our handler: the direct path
        assert log is not None
        log(SCOPE, 200, 13, 10.0, RESPONSE_HEADERS)
        await asyncio.sleep(0)

    asyncio.run(main())
    line = json.loads("".join(writes.writes))
    assert line.pop("time").endswith("Z")
    expected.pop("time")
    assert line == expected


def test_durations_are_measured_finer_than_the_event_loops_clock() -> None:
    # uvloop's clock moves in whole milliseconds; with it, every duration would read 0.0, 1.0,
    # ... ms. time.perf_counter resolves a hello-world request (a fraction of a millisecond).
    pytest.importorskip("uvloop", reason="uvloop is not installed (the standard extra has it)")
    server = start_cli("tests.apps:app", "--loop", "uvloop", "--log-level", "info")
    try:
        with httpx.Client() as client:
            for _ in range(30):
                client.get(server.url)
    finally:
        server.stop()
    durations = [float(match) for match in re.findall(r'" 200 13 (\d+\.\d)ms', server.output())]
    assert len(durations) == 30
    assert any(duration % 1.0 for duration in durations), durations


@pytest.mark.usefixtures("restore_logging")
def test_log_config_for_the_root_logger_only_receives_the_access_log(tmp_path: Path) -> None:
    # As with uvicorn: the file replaces our setup, and our loggers propagate to its root.
    lines = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = tmp_path / "log.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"f": {"format": "ROOT %(name)s %(message)s"}},
                "handlers": {
                    "h": {
                        "class": "logging.StreamHandler",
                        "formatter": "f",
                        "stream": "ext://sys.stdout",
                    }
                },
                "root": {"handlers": ["h"], "level": "INFO"},
            }
        )
    )
    try:
        configure_logging("info", access_log=True, log_config=str(path))
        root.handlers[0].setStream(lines)  # type: ignore[attr-defined]
        log = make_access_log(lambda: 1.5)
        assert log is not None
        log(SCOPE, 200, 5, 1.0, [])
    finally:
        root.handlers[:], root.level = saved
    assert lines.getvalue().startswith(
        'ROOT asgiserve.access 203.0.113.7:51234 - "GET /items/caf%C3%A9?page=2 HTTP/1.1" 200 5 500.0ms'
    )
