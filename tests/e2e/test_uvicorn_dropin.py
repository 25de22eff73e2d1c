"""asgiserve as a uvicorn drop-in: every option of ``uvicorn --help`` (0.54), written as a uvicorn
user writes it, starts the real CLI; factories, WSGI, --reset-contextvars, exit codes.

The option list is data copied from uvicorn 0.54.0's ``--help`` output (not imported from
uvicorn, which the suite does not install). Each case starts the server on a free port,
makes one request where that makes sense, and stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, _env

pytestmark = pytest.mark.timeout(60)

#: uvicorn 0.54.0's options, each with the values a test starts the server with (None: a flag
#: without a value). Choices are listed in full.
UVICORN_054_OPTIONS: list[tuple[str, list[str | None]]] = [
    ("--host", ["127.0.0.1"]),
    ("--port", ["{port}"]),
    ("--uds", ["{uds}"]),
    ("--fd", ["{fd}"]),
    ("--reload", [None]),
    ("--reload-dir", ["{tmp}"]),
    ("--reload-include", ["*.toml"]),
    ("--reload-exclude", ["*.tmp"]),
    ("--reload-delay", ["0.25"]),
    ("--workers", ["2"]),
    ("--loop", ["auto", "asyncio", "uvloop", "zuvloop"]),
    ("--http", ["auto", "h11", "httptools", "zttp"]),
    ("--http2", [None]),
    ("--ws", ["auto", "websockets", "websockets-sansio", "wsproto"]),
    ("--ws-max-size", ["16777216"]),
    ("--ws-max-queue", ["32"]),
    ("--ws-ping-interval", ["20.0"]),
    ("--ws-ping-timeout", ["20.0"]),
    ("--ws-per-message-deflate", ["True", "False"]),
    ("--lifespan", ["auto", "on", "off"]),
    ("--interface", ["auto", "asgi3", "asgi2", "wsgi"]),
    ("--env-file", ["{tmp}/.env"]),
    ("--log-config", ["{tmp}/log.json"]),
    ("--log-level", ["critical", "error", "warning", "info", "debug", "trace"]),
    ("--access-log", [None]),
    ("--no-access-log", [None]),
    ("--use-colors", [None]),
    ("--no-use-colors", [None]),
    ("--proxy-headers", [None]),
    ("--no-proxy-headers", [None]),
    ("--server-header", [None]),
    ("--no-server-header", [None]),
    ("--date-header", [None]),
    ("--no-date-header", [None]),
    ("--forwarded-allow-ips", ["127.0.0.1,::1"]),
    ("--root-path", ["/api"]),
    ("--limit-concurrency", ["10"]),
    ("--backlog", ["128"]),
    ("--limit-max-requests", ["100"]),
    ("--limit-max-requests-jitter", ["0"]),
    ("--timeout-keep-alive", ["5"]),
    ("--timeout-graceful-shutdown", ["5"]),
    ("--timeout-worker-healthcheck", ["5"]),
    ("--ssl-keyfile", ["{tls}/key.pem"]),
    ("--ssl-certfile", ["{tls}/cert.pem"]),
    ("--ssl-keyfile-password", ["secret"]),
    ("--ssl-version", ["17", "5"]),
    ("--ssl-cert-reqs", ["0", "1"]),
    ("--ssl-ca-certs", ["{tls}/ca.pem"]),
    ("--ssl-ciphers", ["TLSv1"]),
    ("--header", ["X-Served-By:test"]),
    ("--version", [None]),
    ("--app-dir", ["{tmp}"]),
    ("--h11-max-incomplete-event-size", ["16384"]),
    ("--reset-contextvars", [None]),
    ("--factory", [None]),
    ("--help", [None]),
]

#: What else a case needs: the app, more options (TLS needs a certificate), and a line the
#: server must log (the warning or note for options that map or mean nothing here).
APP = "tests.apps:app"
TLS = ["--ssl-certfile", "{tls}/cert.pem", "--ssl-keyfile", "{tls}/key.pem"]
EXTRAS: dict[tuple[str, str | None], dict[str, object]] = {
    ("--interface", "asgi2"): {"app": "tests.apps:asgi2_app", "body": "asgi2"},
    ("--interface", "wsgi"): {"app": "tests.e2e.dropin_apps:wsgi_app", "body": "wsgi GET /"},
    ("--factory", None): {"app": "tests.apps:factory"},
    ("--ssl-keyfile", "{tls}/key.pem"): {"more": ["--ssl-certfile", "{tls}/cert.pem"]},
    ("--ssl-certfile", "{tls}/cert.pem"): {"more": ["--ssl-keyfile", "{tls}/key.pem"]},
    ("--ssl-keyfile-password", "secret"): {
        "more": ["--ssl-certfile", "{tls}/cert.pem", "--ssl-keyfile", "{tls}/encrypted-key.pem"]
    },
    ("--ssl-version", "17"): {"more": TLS},
    ("--ssl-version", "5"): {"more": TLS},
    ("--ssl-cert-reqs", "0"): {"more": TLS},
    ("--ssl-cert-reqs", "1"): {"more": [*TLS, "--ssl-ca-certs", "{tls}/ca.pem"]},
    ("--ssl-ca-certs", "{tls}/ca.pem"): {"more": TLS},
    ("--ssl-ciphers", "TLSv1"): {"more": TLS},
    ("--reload-delay", "0.25"): {"logs": "--reload-delay is ignored"},
    ("--loop", "zuvloop"): {"logs": "--loop zuvloop is uvicorn's own loop"},
    ("--http", "zttp"): {"logs": "--http zttp is uvicorn's own parser"},
    ("--ws", "wsproto"): {"logs": "--ws wsproto: asgiserve's WebSocket support"},
    ("--ws", "websockets-sansio"): {"logs": "--ws websockets-sansio: asgiserve's WebSocket"},
    ("--h11-max-incomplete-event-size", "16384"): {"logs": "the same as --limit-request-head"},
    ("--header", "X-Served-By:test"): {"header": ("x-served-by", "test")},
    ("--log-level", "trace"): {"logs": "ASGI [1] started"},
    ("--use-colors", None): {"logs": "\x1b[32mINFO:"},  # even though stderr is not a terminal
}


def _cases() -> Iterator[object]:
    for flag, values in UVICORN_054_OPTIONS:
        for value in values:
            yield pytest.param(flag, value, id=flag if value is None else f"{flag}={value}")


@dataclass
class Place:
    """Files the cases name: {tmp} (an app dir, .env, log config) and {tls} (certificates)."""

    tmp: Path
    tls: Path
    values: dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, tls=self.tls, **self.values)


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Place:
    import trustme
    from cryptography.hazmat.primitives import serialization

    tmp = tmp_path_factory.mktemp("dropin")
    (tmp / ".env").write_text("DROPIN=1\n")
    # A config that only sets up the root logger, on stderr (uvicorn users' common case).
    (tmp / "log.json").write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"f": {"format": "ROOT %(levelname)s %(name)s %(message)s"}},
                "handlers": {
                    "h": {
                        "class": "logging.StreamHandler",
                        "formatter": "f",
                        "stream": "ext://sys.stderr",
                    }
                },
                "root": {"handlers": ["h"], "level": "INFO"},
            }
        )
    )
    tls = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tls / "key.pem"))
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    (tls / "encrypted-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return Place(tmp, tls)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Started:
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start(args: list[str], log_path: Path, pass_fds: tuple[int, ...] = ()) -> Started:
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiserve", *args],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        text=True,
        pass_fds=pass_fds,
    )
    log.close()
    return Started(process, log_path)


def wait_until_serving(started: Started, connect: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started.process.poll() is not None:
            pytest.fail(f"the server exited with {started.process.returncode}:\n{started.log()}")
        try:
            connect()  # type: ignore[operator]
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"the server did not start:\n{started.log()}")


@pytest.mark.parametrize("flag,value", list(_cases()))
def test_uvicorn_option_is_accepted(
    flag: str, value: str | None, place: Place, tmp_path: Path
) -> None:
    if flag in ("--version", "--help"):
        result = subprocess.run(
            [sys.executable, "-m", "asgiserve", flag],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("asgiserve " if flag == "--version" else "Usage:")
        return
    extra = EXTRAS.get((flag, value), {})
    port = free_port()
    uds = str(tmp_path / "s.sock")
    listener: socket.socket | None = None
    fds: tuple[int, ...] = ()
    if flag == "--fd":
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen()
        fds = (listener.fileno(),)
    place.values = {"port": str(port), "uds": uds, "fd": str(fds[0]) if fds else ""}
    args = [str(extra.get("app", APP)), flag]
    if value is not None:
        args.append(place.fill(value))
    args += [place.fill(a) for a in extra.get("more", [])]  # type: ignore[attr-defined]
    if flag not in ("--port", "--uds", "--fd"):
        args += ["--port", str(port)]
    started = start(args, tmp_path / "server.log", fds)
    if listener is not None:
        listener.close()  # the server has its own copy
    try:
        https = any(a.startswith("--ssl-certfile") for a in args)
        if flag == "--uds":
            client = httpx.Client(transport=httpx.HTTPTransport(uds=uds))
            base = "http://localhost"

            def connect() -> None:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(uds)

        else:
            client = httpx.Client(verify=False)
            base = f"{'https' if https else 'http'}://127.0.0.1:{port}"

            def connect() -> None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()

        wait_until_serving(started, connect)
        with client:
            response = client.get(base + str(extra.get("path", "/")), timeout=10)
        assert response.status_code == 200, started.log()
        assert response.text == extra.get("body", "Hello, world!")
        if "header" in extra:
            name, expected = extra["header"]  # type: ignore[misc]
            assert response.headers[name] == expected
        if flag == "--no-server-header":
            assert "server" not in response.headers
        if flag == "--no-date-header":
            assert "date" not in response.headers
    finally:
        code = started.stop()
    log = started.log()
    assert code == 0, log
    assert "Traceback" not in log
    if "logs" in extra:
        assert str(extra["logs"]) in log
    if flag == "--log-config":
        # The user's config replaced ours; the access log reached its root handler.
        assert "ROOT INFO asgiserve.access 127.0.0.1:" in log
        assert "INFO:     " not in log
    if flag == "--no-access-log":
        assert '"GET / HTTP/1.1" 200' not in log


# -- app factories and callables ------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgiserve", *args],
        cwd=ROOT,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_factory_without_the_flag_is_detected_with_a_warning(cli: object) -> None:
    server = cli("tests.e2e.dropin_apps:create_app")  # type: ignore[operator]
    assert httpx.get(server.url).text == "Hello, world!"
    assert "create_app takes no arguments: calling it as an app factory" in server.output()


@pytest.mark.parametrize(
    "app,message",
    [
        ("tests.e2e.dropin_apps:two_arguments", "cannot be called with (scope, receive, send)"),
        ("tests.e2e.dropin_apps:wsgi_app", "(a WSGI app? use --interface wsgi)"),
    ],
)
def test_an_app_that_cannot_take_scope_receive_send_never_starts(app: str, message: str) -> None:
    result = run_cli(app, "--port", "0")
    assert result.returncode == 1
    assert message in result.stderr
    assert "running on" not in result.stderr
    assert "Traceback" not in result.stderr


def test_reset_contextvars_runs_requests_in_an_empty_context(cli: object) -> None:
    plain = cli("tests.e2e.dropin_apps:context_app")  # type: ignore[operator]
    assert httpx.get(plain.url).text == "the server's context"
    reset = cli("tests.e2e.dropin_apps:context_app", "--reset-contextvars")  # type: ignore[operator]
    assert httpx.get(reset.url).text == "nothing"


def test_wsgi_without_a2wsgi_says_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS.format(names=("a2wsgi",)))
    result = run_cli(
        "tests.e2e.dropin_apps:wsgi_app",
        "--interface",
        "wsgi",
        "--port",
        "0",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert result.returncode == 1
    assert "a2wsgi, which is not installed" in result.stderr
    assert "pip install -e '.[wsgi]'" in result.stderr


#: A sitecustomize module that makes importing some packages fail, as if not installed.
BLOCK_IMPORTS = """
import sys

class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


# -- HTTP/2 without the h2 package ------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_h2c_without_h2_gets_a_505_and_the_log_says_how_to_get_http2(
    http: str, tmp_path: Path, cli: object
) -> None:
    # Importing h2 fails in the server's process, as if the http2 extra were not installed.
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS.format(names=("h2", "hpack")))
    server = cli(  # type: ignore[operator]
        "tests.apps:app", "--http", http, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(PREFACE)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert b"connection: close\r\n" in answer
    assert httpx.get(server.url).text == "Hello, world!"  # HTTP/1.1 is served as usual
    log = server.output()
    assert f"http: {http}," in log  # the startup line: no "+h2"
    assert log.count("HTTP/2 is off: it needs the h2 package") == 1
    assert "pip install -e '.[http2]'" in log


def test_no_http2_says_nothing_about_h2(cli: object) -> None:
    server = cli("tests.apps:app", "--no-http2")  # type: ignore[operator]
    assert "HTTP/2 is off" not in server.output()


def test_run_takes_uvicorns_keywords(tmp_path: Path) -> None:
    port = free_port()
    program = (
        "import asgiserve\n"
        f"asgiserve.run('tests.e2e.dropin_apps:wsgi_app', interface='wsgi', port={port},"
        " reload_delay=0.5, h11_max_incomplete_event_size=16384, ws='wsproto',"
        " limit_max_requests=1)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/run")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        assert response.text == "wsgi GET /run"
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "--reload-delay is ignored" in stderr
    assert "the same as --limit-request-head 16384" in stderr
