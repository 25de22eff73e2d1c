"""Real proxies in front of the real CLI: HAProxy with the PROXY protocol, nginx with
X-Forwarded-*. Both run on loopback with configs generated in a temporary directory.

Loopback has a whole /8: the test client connects from 127.0.0.2 so that "the original
client" is an address neither the proxy (127.0.0.1) nor asgiserve would see by accident.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import CLIServer, start_cli

CLIENT_ADDRESS = "127.0.0.2"

WHOAMI = textwrap.dedent(
    """
    import json

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = json.dumps({
            "client": scope["client"], "scheme": scope["scheme"], "server": scope["server"],
            "tls": "tls" in scope["extensions"], "xff": headers.get("x-forwarded-for"),
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("edgeapps")
    (directory / "whoami.py").write_text(WHOAMI)
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("edgepki")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return {"cert": str(cert), "key": str(key), "context": context}


def start_proxy(command: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_proxy(process, signal.SIGTERM)
                raise RuntimeError(f"{command[0]} did not start") from None
            time.sleep(0.05)


def stop_proxy(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


def request(
    port: int,
    *,
    context: ssl.SSLContext | None = None,
    headers: bytes = b"",
) -> tuple[dict[str, Any], tuple[str, int]]:
    """GET / from 127.0.0.2; the app's report and our own (address, port)."""
    raw = socket.socket()
    raw.settimeout(10)
    raw.bind((CLIENT_ADDRESS, 0))
    raw.connect(("127.0.0.1", port))
    sock: socket.socket = (
        context.wrap_socket(raw, server_hostname="localhost") if context is not None else raw
    )
    with sock:
        local = sock.getsockname()
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return json.loads(body), (local[0], local[1])


# -- HAProxy, PROXY protocol v2 ----------------------------------------------------------------

HAPROXY_CONF = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend edge
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server app1 127.0.0.1:{upstream} send-proxy-v2
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian haproxy)")
    started: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> int:
        port = free_port()
        conf = tmp_path / f"haproxy-{port}.cfg"
        conf.write_text(HAPROXY_CONF.format(port=port, upstream=upstream))
        # -db: stay in the foreground, no daemon; SIGTERM stops it.
        started.append(start_proxy(["haproxy", "-db", "-f", str(conf)], port))
        return port

    yield start
    for process in started:
        stop_proxy(process, signal.SIGTERM)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls-passthrough"])
def test_haproxy_send_proxy_v2_gives_the_app_the_original_client(
    haproxy: Any, app_dir: Path, pki: dict[str, Any], tls: bool
) -> None:
    extra = ["--ssl-certfile", pki["cert"], "--ssl-keyfile", pki["key"]] if tls else []
    server = start_cli("whoami:app", "--app-dir", str(app_dir), "--proxy-protocol", "v2", *extra)
    try:
        port = haproxy(server.port)
        report, local = request(port, context=pki["context"] if tls else None)
        # The client's own address and port, through HAProxy's separate TCP connection.
        assert report["client"] == [local[0], local[1]]
        assert report["server"] == ["127.0.0.1", port]
        assert report["scheme"] == ("https" if tls else "http")
        assert report["tls"] is tls
    finally:
        assert server.stop() == 0


# -- nginx, X-Forwarded-* ----------------------------------------------------------------------

NGINX_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
        }}
    }}
}}
"""


@pytest.fixture
def behind_nginx(
    tmp_path: Path, app_dir: Path, pki: dict[str, Any]
) -> Iterator[tuple[CLIServer, int, int]]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (Debian nginx-light)")
    server = start_cli("whoami:app", "--app-dir", str(app_dir))  # trusts 127.0.0.1 by default
    port, tls_port = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=tmp_path,
            port=port,
            tls_port=tls_port,
            upstream=server.port,
            cert=pki["cert"],
            key=pki["key"],
        )
    )
    process = start_proxy(
        ["nginx", "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"], port
    )
    try:
        yield server, port, tls_port
    finally:
        stop_proxy(process, signal.SIGQUIT)
        assert server.stop() == 0


def test_nginx_forwarded_headers_give_the_app_the_client_and_scheme(
    behind_nginx: tuple[CLIServer, int, int], pki: dict[str, Any]
) -> None:
    _, port, tls_port = behind_nginx
    report, _ = request(port)
    assert report["client"] == [CLIENT_ADDRESS, 0]
    assert report["scheme"] == "http"
    assert report["server"] == ["localhost", port]
    report, _ = request(tls_port, context=pki["context"])
    assert report["client"] == [CLIENT_ADDRESS, 0]
    assert report["scheme"] == "https"  # TLS ended at nginx; the app still knows
    assert report["server"] == ["localhost", tls_port]
    assert report["tls"] is False


def test_spoofed_forwarded_for_through_nginx_is_not_believed(
    behind_nginx: tuple[CLIServer, int, int],
) -> None:
    _, port, _ = behind_nginx
    report, _ = request(port, headers=b"X-Forwarded-For: 6.6.6.6\r\n")
    assert report["xff"] == f"6.6.6.6, {CLIENT_ADDRESS}"  # nginx appended what it saw
    assert report["client"] == [CLIENT_ADDRESS, 0]  # the right-most untrusted entry


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    behind_nginx: tuple[CLIServer, int, int],
) -> None:
    server, _, _ = behind_nginx
    # Straight to asgiserve from 127.0.0.2, which --forwarded-allow-ips does not include.
    report, local = request(
        server.port, headers=b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
    )
    assert report["client"] == [CLIENT_ADDRESS, local[1]]
    assert report["scheme"] == "http"
