"""Static files: ``StaticFiles`` (an ordinary ASGI app) and the server's file extensions
(``http.response.pathsend``, ``http.response.zerocopysend`` sent with sendfile(2)), in process.

The server-side tests run on every parser x loop backend; the app's behaviour is the same on
all of them, so those run on the default one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import gzip
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgiserve.apps import static as static_module
from asgiserve.apps.mounts import Mounts
from asgiserve.apps.static import (
    StaticFiles,
    choose_coding,
    etag_matches,
    evaluate_preconditions,
    if_range_holds,
    parse_ranges,
    route_path,
)
from asgiserve.config import Config, ConfigError
from asgiserve.transport.sendfile import FileEndedEarly, SocketFileSender, send_file_buffered
from tests.conftest import RawClient
from tests.e2e.apps.guarded_static import PasswordStaticFiles, PasswordWrapper

DATA = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder to serve, with a secret next to it (outside)."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "data.bin").write_bytes(DATA)
    (root / "app.js").write_text("console.log(1)")
    (root / "sub" / "page.txt").write_text("sub page")
    (root / "sub" / "index.html").write_text("sub index")
    (root / ".env").write_text("SECRET=1")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return root


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)


def raw_get(port: int, target: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    client = RawClient(port)
    try:
        client.send(
            method
            + b" "
            + target
            + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            + extra
            + b"\r\n"
        )
        return client.recv_until_closed()
    finally:
        client.close()


# == the server: pathsend and zerocopysend ====================================================


def file_app(tmp_path: Path) -> Any:
    """An app that sends files in the ways the extensions allow, chosen by the path."""
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen["extensions"] = scope["extensions"]
        route = scope["path"]
        if route == "/pathsend":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": str(path)})
        elif route == "/missing":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})
        elif route == "/slice":
            with open(path, "rb") as file:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 206,
                        "headers": [(b"content-length", b"1000")],
                    }
                )
                await send(
                    {
                        "type": "http.response.zerocopysend",
                        "file": file,
                        "offset": 500,
                        "count": 1000,
                    }
                )
        elif route == "/position":
            with open(path, "rb") as file:
                file.seek(100)
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send(
                    {
                        "type": "http.response.zerocopysend",
                        "file": file.fileno(),
                        "count": 50,
                        "more_body": True,
                    }
                )
                seen["position"] = os.lseek(file.fileno(), 0, os.SEEK_CUR)
                await send({"type": "http.response.body", "body": b"|", "more_body": True})
                await send({"type": "http.response.zerocopysend", "file": file})
        elif route == "/too-long":
            with open(path, "rb") as file:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send(
                    {
                        "type": "http.response.zerocopysend",
                        "file": file,
                        "offset": 0,
                        "count": 10**7,
                    }
                )
        elif route == "/wrong-length":
            with open(path, "rb") as file:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"10")],
                    }
                )
                await send({"type": "http.response.zerocopysend", "file": file, "count": 20})
        elif route == "/pathsend-late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await send({"type": "http.response.pathsend", "path": str(path)})
        elif route == "/not-modified":
            await send({"type": "http.response.start", "status": 304, "headers": []})
            await send({"type": "http.response.pathsend", "path": str(path)})

    app.seen = seen  # type: ignore[attr-defined]
    return app


@pytest.mark.usefixtures("backend")
class TestFileExtensions:
    def test_every_request_is_offered_pathsend_and_zerocopysend(
        self, serve: Any, tmp_path: Path
    ) -> None:
        app = file_app(tmp_path)
        server = serve(app)
        get(server.url + "/pathsend")
        assert "http.response.pathsend" in app.seen["extensions"]
        assert "http.response.zerocopysend" in app.seen["extensions"]

    def test_pathsend_sends_the_whole_file_with_its_length(
        self, serve: Any, tmp_path: Path
    ) -> None:
        server = serve(file_app(tmp_path))
        response = get(server.url + "/pathsend")
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(DATA))
        assert response.content == DATA

    def test_pathsend_to_a_head_request_announces_the_length_without_a_body(
        self, serve: Any, tmp_path: Path, raw: Any
    ) -> None:
        # RFC 9110 section 9.3.2: HEAD gets the header fields GET would.
        server = serve(file_app(tmp_path))
        client = raw(server.port)
        client.send(
            b"HEAD /pathsend HTTP/1.1\r\nHost: t\r\n\r\nGET /pathsend HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        client.head_request = True
        head = client.read_response()
        assert head.header(b"content-length") == str(len(DATA)).encode()
        client.head_request = False
        assert client.read_response().body == DATA  # nothing extra came after the HEAD

    def test_zerocopysend_sends_the_slice_given_by_offset_and_count(
        self, serve: Any, tmp_path: Path
    ) -> None:
        server = serve(file_app(tmp_path))
        response = get(server.url + "/slice")
        assert response.status_code == 206
        assert response.content == DATA[500:1500]

    def test_zerocopysend_without_offset_reads_from_the_file_position_and_advances_it(
        self, serve: Any, tmp_path: Path
    ) -> None:
        app = file_app(tmp_path)
        server = serve(app)
        response = get(server.url + "/position")
        # Parts of unknown total length mixed with body messages: chunked framing.
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == DATA[100:150] + b"|" + DATA[150:]
        assert app.seen["position"] == 150

    def test_file_shorter_than_the_count_aborts_the_response(
        self, serve: Any, tmp_path: Path, raw: Any
    ) -> None:
        server = serve(file_app(tmp_path))
        client = raw(server.port)
        client.send(b"GET /too-long HTTP/1.1\r\nHost: t\r\n\r\n")
        data = client.recv_until_closed()
        # The head promised 10**7 bytes: the connection is dropped once the file runs out.
        assert b"content-length: 10000000" in data
        assert len(data) < 10**7

    def test_zerocopysend_beyond_the_declared_length_fails_before_sending(
        self, serve: Any, tmp_path: Path
    ) -> None:
        server = serve(file_app(tmp_path))
        response = get(server.url + "/wrong-length")
        assert response.status_code == 500

    def test_pathsend_to_a_missing_file_is_a_500(self, serve: Any, tmp_path: Path) -> None:
        server = serve(file_app(tmp_path))
        assert get(server.url + "/missing").status_code == 500

    def test_pathsend_after_a_body_part_aborts_the_response(
        self, serve: Any, tmp_path: Path, raw: Any
    ) -> None:
        server = serve(file_app(tmp_path))
        client = raw(server.port)
        client.send(b"GET /pathsend-late HTTP/1.1\r\nHost: t\r\n\r\n")
        data = client.recv_until_closed()
        assert data.startswith(b"HTTP/1.1 200")
        assert not data.endswith(b"0\r\n\r\n")  # never completed

    def test_pathsend_with_a_304_sends_no_body(self, serve: Any, tmp_path: Path, raw: Any) -> None:
        server = serve(file_app(tmp_path))
        client = raw(server.port)
        client.send(
            b"GET /not-modified HTTP/1.1\r\nHost: t\r\n\r\nGET /slice HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first = client.read_response()
        assert first.status == 304
        assert client.read_response().body == DATA[500:1500]

    def test_pipelined_file_responses_keep_their_order(
        self, serve: Any, tmp_path: Path, raw: Any
    ) -> None:
        # The head of a corked pipelined burst must reach the wire before the file.
        server = serve(file_app(tmp_path))
        client = raw(server.port)
        client.send(
            b"GET /slice HTTP/1.1\r\nHost: t\r\n\r\n" * 2
            + b"GET /pathsend HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert client.read_response().body == DATA[500:1500]
        assert client.read_response().body == DATA[500:1500]
        assert client.read_response().body == DATA

    @pytest.mark.skipif(not hasattr(socket, "MSG_MORE"), reason="MSG_MORE is Linux's")
    def test_the_head_leaves_with_the_first_bytes_of_the_file(
        self, serve: Any, tmp_path: Path
    ) -> None:
        # Held back with MSG_MORE, the head is in the segment that carries the file's first
        # bytes: a client never wakes up to a head alone.
        (tmp_path / "data.bin").write_bytes(DATA)
        server = serve(StaticFiles(tmp_path))
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            for _ in range(30):
                client.sendall(b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                first = client.recv(1 << 20)
                head, _, body = first.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and body, first[:300]
                received = len(body)
                while received < len(DATA):
                    received += len(client.recv(1 << 20))
                assert received == len(DATA)

    def test_a_slow_client_is_flow_controlled_without_blocking_others(
        self, serve: Any, tmp_path: Path
    ) -> None:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20) * 24)  # 24 MiB
        (tmp_path / "data.bin").write_bytes(DATA)
        server = serve(StaticFiles(tmp_path))
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        slow.connect(("127.0.0.1", server.port))
        try:
            slow.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            received = len(slow.recv(65536))
            time.sleep(0.3)  # the server fills the socket buffers and must wait
            started = time.monotonic()
            assert get(server.url + "/data.bin").content == DATA
            assert time.monotonic() - started < 1.0
            slow.settimeout(10)
            size = big.stat().st_size
            while received < size + 100:
                chunk = slow.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
            assert received > 24 << 20  # head + every byte of the file
        finally:
            slow.close()

    def test_a_file_waits_for_bytes_the_transport_still_buffers(
        self, serve: Any, tmp_path: Path
    ) -> None:
        # Pipelined large files to a client that reads late: the second head is buffered by
        # the transport (the socket is full) and must reach the wire before its file.
        big = os.urandom(1 << 20) * 8
        (tmp_path / "big.bin").write_bytes(big)
        server = serve(StaticFiles(tmp_path))
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", server.port))
        try:
            client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
            time.sleep(0.3)
            client.settimeout(10)
            data = bytearray()
            while True:
                chunk = client.recv(1 << 20)
                data += chunk
                if not chunk or (len(data) > 3 * len(big) and data.endswith(big[-64:])):
                    break
            responses = bytes(data).split(b"HTTP/1.1 200 OK\r\n")[1:]
            assert len(responses) == 3
            for response in responses:
                head, _, body = response.partition(b"\r\n\r\n")
                assert b"content-length: %d" % len(big) in head
                assert body == big
        finally:
            client.close()

    def test_client_going_away_mid_file_ends_the_response(self, serve: Any, tmp_path: Path) -> None:
        big = tmp_path / "big.bin"
        with open(big, "wb") as file:
            file.truncate(64 << 20)
        (tmp_path / "data.bin").write_bytes(DATA)
        server = serve(StaticFiles(tmp_path))
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1000)
        sock.close()
        time.sleep(0.3)
        # The server is fine and serves the next client.
        assert get(server.url + "/data.bin").content == DATA


def tls_site(tmp_path: Path, big: bytes) -> tuple[Path, dict[str, str], ssl.SSLContext]:
    """A folder holding ``big.bin``, the server's TLS options for a certificate for
    localhost, and a client context that trusts it."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(big)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return site, {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}, context


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_files_under_tls_are_read_in_chunks_and_encrypted(
    serve: Any, tmp_path: Path, http2: bool
) -> None:
    # No sendfile(2) under TLS (the bytes are encrypted in user space) nor in HTTP/2 DATA
    # frames: the buffered path sends them, in several chunks for this file.
    if http2:
        pytest.importorskip("h2")
    big = os.urandom(1 << 20) * 3
    site, tls_options, context = tls_site(tmp_path, big)
    server = serve(StaticFiles(site), **tls_options)
    with httpx.Client(verify=context, http2=http2, timeout=10) as client:
        response = client.get(f"https://localhost:{server.port}/big.bin")
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert response.content == big
        ranged = client.get(
            f"https://localhost:{server.port}/big.bin", headers={"Range": "bytes=5-9,-3"}
        )
        assert ranged.status_code == 206
        assert big[5:10] in ranged.content and big[-3:] in ranged.content


def test_answered_files_under_tls_are_read_in_chunks_and_encrypted(
    serve: Any, tmp_path: Path, app_calls: list[str]
) -> None:
    big = os.urandom(1 << 20) * 2
    site, tls_options, context = tls_site(tmp_path, big)
    server = serve(None, static=str(site), **tls_options)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            for _ in range(2):
                tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
                received = b""
                while not received.endswith(big[-64:]) or len(received) <= len(big):
                    chunk = tls.recv(1 << 16)
                    assert chunk
                    received += chunk
                assert split_response(received)[2] == big
    # Keep-alive held: the second request came on the same connection, and the server
    # answered it (through its buffered file path) without the app.
    assert app_calls == ["/big.bin"]


def test_buffered_sending_reads_in_chunks_through_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA * 5)

    class Sink:
        writing_paused = True
        parts: list[tuple[bytes, bool]] = []
        drains = 0

        def send_body(self, body: bytes, more_body: bool) -> None:
            self.parts.append((body, more_body))

        async def drain(self) -> None:
            self.drains += 1

    sink = Sink()
    fd = os.open(path, os.O_RDONLY)
    try:
        asyncio.run(send_file_buffered(sink, fd, 10, len(DATA) * 5 - 10, False))  # type: ignore[arg-type]
        with pytest.raises(FileEndedEarly):
            asyncio.run(send_file_buffered(sink, fd, len(DATA) * 5 - 5, 10, False))  # type: ignore[arg-type]
    finally:
        os.close(fd)
    body = b"".join(part for part, _ in sink.parts[:-1])
    assert body == (DATA * 5)[10:]
    assert [more for _, more in sink.parts[:-2]] == [True] * (len(sink.parts) - 2)
    assert sink.parts[-2][1] is False
    assert sink.drains >= 2


class BufferingTransport(asyncio.Transport):
    """Reports ``buffered`` bytes still queued for its first calls (a head not yet sent)."""

    def __init__(self, buffered: int = 0) -> None:
        super().__init__()
        self.buffered = buffered
        self.closing = False

    def get_write_buffer_size(self) -> int:
        size, self.buffered = self.buffered, max(self.buffered - 1, 0)
        return size

    def is_closing(self) -> bool:
        return self.closing


def send_through_socketpair(
    path: Path, transport: BufferingTransport, *, read: bool = True, lose_after: float = 0
) -> tuple[bool, bytes]:
    """SocketFileSender.send of the whole file over a socketpair with small buffers."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    ours.setblocking(False)
    received = bytearray()

    def reader() -> None:
        while chunk := theirs.recv(65536):
            received.extend(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    if read:
        thread.start()

    async def main() -> bool:
        sender = SocketFileSender(asyncio.get_running_loop(), transport, ours.fileno())
        if lose_after:
            asyncio.get_running_loop().call_later(lose_after, sender.connection_lost)
        fd = os.open(path, os.O_RDONLY)
        try:
            return await sender.send(fd, 0, path.stat().st_size)
        finally:
            os.close(fd)

    try:
        done = asyncio.run(main())
    finally:
        ours.close()
        if read:
            thread.join(5)
        theirs.close()
    return done, bytes(received)


def test_sendfile_waits_for_the_transport_buffer_then_for_a_slow_socket(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    done, received = send_through_socketpair(path, BufferingTransport(buffered=3))
    assert done
    assert received == path.read_bytes()


def test_sendfile_stops_when_the_peer_is_gone_or_the_connection_lost(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    transport = BufferingTransport()
    # Nobody reads: the socket fills up, the sender waits, and the connection is lost.
    done, _ = send_through_socketpair(path, transport, read=False, lose_after=0.2)
    assert not done
    ours, theirs = socket.socketpair()
    theirs.close()
    ours.setblocking(False)

    async def main() -> bool:
        sender = SocketFileSender(asyncio.get_running_loop(), BufferingTransport(), ours.fileno())
        fd = os.open(path, os.O_RDONLY)
        try:
            return await sender.send(fd, 0, 1 << 20)  # EPIPE
        finally:
            os.close(fd)

    try:
        assert asyncio.run(main()) is False
    finally:
        ours.close()


def test_sendfile_sender_never_closes_the_transports_socket(tmp_path: Path) -> None:
    # The sender keeps a socket object over the transport's descriptor (for send() with
    # MSG_MORE); dropping or releasing the sender must leave the descriptor open.
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    ours.setblocking(False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fd = os.open(path, os.O_RDONLY)
        try:
            for release in ("drop", "connection_lost"):
                sender = SocketFileSender(loop, BufferingTransport(), ours.fileno(), ours.family)
                for _ in range(2):
                    assert sender.send_now(fd, 0, 10, b"head:") == 10
                assert sender.sock is not None
                if release == "connection_lost":
                    sender.connection_lost()
                    assert sender.sock is None
                del sender
                gc.collect()
        finally:
            os.close(fd)

    try:
        asyncio.run(main())
        ours.sendall(b"still open")
        client.settimeout(5)
        expected = b"head:0123456789" * 4 + b"still open"
        received = b""
        while len(received) < len(expected):
            received += client.recv(65536)
        assert received == expected
    finally:
        for sock in (ours, client, listener):
            sock.close()


def test_sendfile_of_a_short_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)

    async def main() -> bool:
        sender = SocketFileSender(asyncio.get_running_loop(), BufferingTransport(), ours.fileno())
        fd = os.open(path, os.O_RDONLY)
        try:
            return await sender.send(fd, 50, 100)
        finally:
            os.close(fd)

    try:
        with pytest.raises(FileEndedEarly):
            asyncio.run(main())
        assert theirs.recv(100) == b"x" * 50
    finally:
        ours.close()
        theirs.close()


def test_no_sendfile_under_tls() -> None:
    class Socket:
        def fileno(self) -> int:
            return 99

    class TLSTransport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"socket": Socket(), "sslcontext": object()}.get(name, default)

    loop = asyncio.new_event_loop()
    try:
        sender = SocketFileSender.for_transport(loop, TLSTransport())
    finally:
        loop.close()
    assert not sender.usable


# == StaticFiles ==============================================================================


@pytest.fixture
def static(serve: Any, site: Path) -> Any:
    return serve(StaticFiles(site))


def test_get_serves_the_file_with_its_metadata(static: Any, site: Path) -> None:
    response = get(static.url + "/data.bin")
    assert response.status_code == 200
    assert response.content == DATA
    headers = response.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(DATA))
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "no-cache"
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    assert headers["last-modified"] == formatdate(
        int((site / "data.bin").stat().st_mtime), usegmt=True
    )


def test_head_gets_the_headers_without_the_body(static: Any, raw: Any) -> None:
    client = raw(static.port)
    client.send(b"HEAD /data.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    client.head_request = True
    response = client.read_response()
    assert response.status == 200
    assert response.header(b"content-length") == str(len(DATA)).encode()
    assert response.header(b"etag") is not None
    assert not client.closed(timeout=0.3) and client.buffer == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_405_with_allow(static: Any, method: str) -> None:
    # RFC 9110 section 15.5.6.
    response = httpx.request(method, static.url + "/data.bin")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.wasm", "application/wasm"),
        ("a.svg", "image/svg+xml"),
        ("a.png", "image/png"),
        ("a.woff2", "font/woff2"),
        ("a.tar.gz", "application/gzip"),
        ("a.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_type_comes_from_the_name(
    serve: Any, tmp_path: Path, name: str, content_type: str
) -> None:
    (tmp_path / name).write_bytes(b"x")
    response = get(serve(StaticFiles(tmp_path)).url + "/" + name)
    assert response.headers["content-type"] == content_type
    assert "content-encoding" not in response.headers  # a .gz file is served as it is


def test_folder_is_served_as_its_index_html(static: Any) -> None:
    assert get(static.url + "/").text == "<h1>home</h1>"
    assert get(static.url + "/sub/").text == "sub index"


def test_folder_without_a_trailing_slash_redirects_keeping_the_query(static: Any) -> None:
    response = get(static.url + "/sub?a=1&b=2")
    assert response.status_code == 301
    assert response.headers["location"] == "sub/?a=1&b=2"
    followed = get(static.url + "/sub?a=1", follow_redirects=True)
    assert str(followed.url).endswith("/sub/?a=1")
    assert followed.text == "sub index"


def test_folder_without_index_is_404_without_listing(static: Any) -> None:
    assert get(static.url + "/empty/").status_code == 404


def test_file_with_a_trailing_slash_is_404(static: Any) -> None:
    assert get(static.url + "/data.bin/").status_code == 404


def test_listing_shows_escaped_names_sizes_and_dates(serve: Any, site: Path) -> None:
    (site / "empty" / "<script>.txt").write_text("12345")
    (site / "empty" / '"><img src=x onerror=alert(1)>').write_text("x")
    (site / "empty" / "a b&c.txt").write_text("x")
    (site / "empty" / "folder").mkdir()
    response = get(serve(StaticFiles(site, listing=True)).url + "/empty/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "<script>" not in page and "<img" not in page
    assert ">&lt;script&gt;.txt</a>" in page
    assert 'href="%3Cscript%3E.txt"' in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="a%20b%26c.txt"' in page
    assert ">5 B<" in page
    assert 'href="folder/"' in page
    assert page.index("folder/") < page.index("a b&amp;c.txt")  # folders first
    assert 'href="../"' in page
    assert "Index of /empty/" in page


def test_listing_hides_dotfiles_and_links_leading_outside(serve: Any, site: Path) -> None:
    (site / "empty" / ".dot").write_text("x")
    (site / "empty" / "out").symlink_to(site.parent / "secret.txt")
    (site / "empty" / "in").symlink_to(site / "data.bin")
    page = get(serve(StaticFiles(site, listing=True)).url + "/empty/").text
    assert ".dot" not in page
    assert 'href="out"' not in page
    assert 'href="in"' in page


def test_listing_is_preferred_to_nothing_but_not_to_index_html(serve: Any, site: Path) -> None:
    server = serve(StaticFiles(site, listing=True))
    assert get(server.url + "/sub/").text == "sub index"
    assert get(serve(StaticFiles(site, listing=True, html=False)).url + "/sub/").text.startswith(
        "<!DOCTYPE html>"
    )


# -- conditional requests (RFC 9110 section 13) -------------------------------------------------


def test_if_none_match_with_the_etag_gives_304(static: Any) -> None:
    etag = get(static.url + "/data.bin").headers["etag"]
    response = get(static.url + "/data.bin", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "no-cache"


def test_if_none_match_uses_weak_comparison_and_lists(static: Any) -> None:
    etag = get(static.url + "/data.bin").headers["etag"]
    for value in (f'"x", W/{etag}', "*"):
        assert get(static.url + "/data.bin", headers={"If-None-Match": value}).status_code == 304
    assert get(static.url + "/data.bin", headers={"If-None-Match": '"other"'}).status_code == 200


def test_if_modified_since_gives_304_unless_modified_later(static: Any) -> None:
    last_modified = get(static.url + "/data.bin").headers["last-modified"]
    assert (
        get(static.url + "/data.bin", headers={"If-Modified-Since": last_modified}).status_code
        == 304
    )
    earlier = formatdate(0, usegmt=True)
    assert get(static.url + "/data.bin", headers={"If-Modified-Since": earlier}).status_code == 200
    assert (
        get(static.url + "/data.bin", headers={"If-Modified-Since": "garbage"}).status_code == 200
    )


def test_if_none_match_takes_precedence_over_if_modified_since(static: Any) -> None:
    # RFC 9110 section 13.2.2: If-Modified-Since is ignored when If-None-Match is present.
    last_modified = get(static.url + "/data.bin").headers["last-modified"]
    response = get(
        static.url + "/data.bin",
        headers={"If-None-Match": '"other"', "If-Modified-Since": last_modified},
    )
    assert response.status_code == 200


def test_if_match_and_if_unmodified_since_failing_give_412(static: Any) -> None:
    assert get(static.url + "/data.bin", headers={"If-Match": '"other"'}).status_code == 412
    past = formatdate(0, usegmt=True)
    assert get(static.url + "/data.bin", headers={"If-Unmodified-Since": past}).status_code == 412
    etag = get(static.url + "/data.bin").headers["etag"]
    assert get(static.url + "/data.bin", headers={"If-Match": etag}).status_code == 200


def test_precondition_order_follows_rfc_9110() -> None:
    etag, modified = b'"abc"', 1000
    date = formatdate(1000, usegmt=True).encode()
    old = formatdate(10, usegmt=True).encode()
    assert evaluate_preconditions({}, etag, modified) == 200
    # If-Match decides before If-None-Match, If-Unmodified-Since only without If-Match.
    assert (
        evaluate_preconditions({b"if-match": b'"x"', b"if-none-match": etag}, etag, modified) == 412
    )
    assert (
        evaluate_preconditions({b"if-match": etag, b"if-unmodified-since": old}, etag, modified)
        == 200
    )
    assert evaluate_preconditions({b"if-unmodified-since": old}, etag, modified) == 412
    assert evaluate_preconditions({b"if-modified-since": date}, etag, modified) == 304
    assert (
        evaluate_preconditions(
            {b"if-none-match": b'"x"', b"if-modified-since": date}, etag, modified
        )
        == 200
    )
    # Strong comparison for If-Match: a weak tag never matches.
    assert not etag_matches(b'W/"abc"', etag, weak=False)
    assert etag_matches(b'W/"abc"', etag, weak=True)


def test_a_changed_file_gets_a_new_etag(static: Any, site: Path) -> None:
    etag = get(static.url + "/data.bin").headers["etag"]
    (site / "data.bin").write_bytes(DATA[:-1])
    response = get(static.url + "/data.bin", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.headers["etag"] != etag


# -- ranges (RFC 9110 section 14) ----------------------------------------------------------------


def test_single_range_gives_206_with_content_range(static: Any) -> None:
    response = get(static.url + "/data.bin", headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    assert response.headers["content-length"] == "10"
    assert response.content == DATA[10:20]


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=-100", len(DATA) - 100, len(DATA) - 1),
        ("bytes=100000-", 100000, len(DATA) - 1),
        ("bytes=0-999999", 0, len(DATA) - 1),
    ],
)
def test_suffix_open_and_overlong_ranges(static: Any, spec: str, start: int, end: int) -> None:
    response = get(static.url + "/data.bin", headers={"Range": spec})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.content == DATA[start : end + 1]


def test_several_ranges_give_multipart_byteranges(static: Any) -> None:
    response = get(static.url + "/data.bin", headers={"Range": "bytes=0-9, 100-109, -5"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1].encode()
    assert int(response.headers["content-length"]) == len(response.content)
    parts = response.content.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    expected = [(0, 9), (100, 109), (len(DATA) - 5, len(DATA) - 1)]
    for part, (start, end) in zip(parts[1:-1], expected, strict=True):
        head, _, body = part.partition(b"\r\n\r\n")
        assert f"content-range: bytes {start}-{end}/{len(DATA)}".encode() in head
        assert b"content-type: application/octet-stream" in head
        assert body == DATA[start : end + 1] + b"\r\n"


def test_unsatisfiable_range_gives_416_with_the_size(static: Any) -> None:
    response = get(static.url + "/data.bin", headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("spec", ["bytes=5-1", "items=0-1", "bytes=x-1", "bytes=", "bytes=1"])
def test_invalid_range_is_ignored(static: Any, spec: str) -> None:
    response = get(static.url + "/data.bin", headers={"Range": spec})
    assert response.status_code == 200
    assert response.content == DATA


def test_if_range_sends_the_range_only_while_the_validator_matches(static: Any) -> None:
    first = get(static.url + "/data.bin")
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    for validator in (etag, last_modified):
        response = get(
            static.url + "/data.bin", headers={"Range": "bytes=0-0", "If-Range": validator}
        )
        assert response.status_code == 206
    for validator in ('"old"', f"W/{etag}", formatdate(0, usegmt=True)):
        response = get(
            static.url + "/data.bin", headers={"Range": "bytes=0-0", "If-Range": validator}
        )
        assert response.status_code == 200
        assert response.content == DATA


def test_range_is_ignored_for_head(static: Any, raw: Any) -> None:
    client = raw(static.port)
    client.send(b"HEAD /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n")
    client.head_request = True
    response = client.read_response()
    assert response.status == 200
    assert response.header(b"content-length") == str(len(DATA)).encode()


def test_range_parsing_rules() -> None:
    assert parse_ranges(b"bytes=0-4", 10) == [(0, 4)]
    assert parse_ranges(b"bytes=8-20", 10) == [(8, 9)]
    assert parse_ranges(b"bytes=-3", 10) == [(7, 9)]
    assert parse_ranges(b"bytes=-30", 10) == [(0, 9)]
    assert parse_ranges(b"bytes=10-", 10) == []  # unsatisfiable
    assert parse_ranges(b"bytes=-0", 10) == []
    assert parse_ranges(b"bytes=0-0", 0) == []
    assert parse_ranges(b"BYTES = 1-2", 10) == [(1, 2)]
    assert parse_ranges(b"bytes=0-1,,3-4", 10) == [(0, 1), (3, 4)]
    # Overlapping or adjacent ranges are coalesced (section 14.2).
    assert parse_ranges(b"bytes=0-5,3-8,9-9", 10) == [(0, 9)]
    assert (
        parse_ranges(b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 200, 2)), 1000)
        is None
    )
    assert parse_ranges(b"bytes=1-2;x", 10) is None
    assert if_range_holds(None, b'"a"', 5)


# -- precompressed siblings --------------------------------------------------------------------


@pytest.fixture
def compressed(serve: Any, tmp_path: Path) -> Any:
    text = b"body{color:red}\n" * 100
    (tmp_path / "style.css").write_bytes(text)
    (tmp_path / "style.css.gz").write_bytes(gzip.compress(text))
    (tmp_path / "style.css.br").write_bytes(b"BROTLI-BYTES")
    return serve(StaticFiles(tmp_path))


def test_precompressed_brotli_is_served_to_clients_that_prefer_it(compressed: Any) -> None:
    response = raw_get(compressed.port, b"/style.css", b"Accept-Encoding: gzip, br\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-encoding: br\r\n" in head
    assert b"vary: accept-encoding\r\n" in head
    assert b"content-type: text/css; charset=utf-8\r\n" in head
    assert body == b"BROTLI-BYTES"


def test_q_values_choose_the_coding(compressed: Any) -> None:
    response = get(compressed.url + "/style.css", headers={"Accept-Encoding": "br;q=0.5, gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.startswith("body")  # httpx decoded it
    response = get(compressed.url + "/style.css", headers={"Accept-Encoding": "gzip;q=0, br;q=0"})
    assert "content-encoding" not in response.headers
    assert response.headers["vary"] == "accept-encoding"


def test_clients_without_accept_encoding_get_the_file_itself(compressed: Any) -> None:
    response = get(compressed.url + "/style.css", headers={"Accept-Encoding": ""})
    assert "content-encoding" not in response.headers
    assert response.content == b"body{color:red}\n" * 100


def test_each_coding_has_its_own_etag(compressed: Any) -> None:
    gz = get(compressed.url + "/style.css", headers={"Accept-Encoding": "gzip"}).headers["etag"]
    plain = get(compressed.url + "/style.css", headers={"Accept-Encoding": "identity"}).headers[
        "etag"
    ]
    assert gz != plain
    response = get(
        compressed.url + "/style.css", headers={"Accept-Encoding": "gzip", "If-None-Match": gz}
    )
    assert response.status_code == 304
    assert response.headers["vary"] == "accept-encoding"


def test_coding_choice_rules() -> None:
    assert choose_coding(None, ["br", "gzip"]) is None
    assert choose_coding(b"gzip, deflate, br", ["br", "gzip"]) == "br"
    assert choose_coding(b"br;q=0.1, gzip;q=0.9", ["br", "gzip"]) == "gzip"
    assert choose_coding(b"x-gzip", ["gzip"]) == "gzip"
    assert choose_coding(b"*", ["br", "gzip"]) == "br"
    assert choose_coding(b"*;q=0, identity", ["br", "gzip"]) is None
    assert choose_coding(b"identity;q=1, gzip;q=0.5", ["gzip"]) is None
    assert choose_coding(b"gzip;q=nonsense", ["gzip"]) is None


# -- safety ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret.txt",
        b"/sub/../../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/secret.txt",
        b"/sub/%2e%2e/%2e%2e/secret.txt",
        b"/..%2fsecret.txt",
        b"/sub%2f..%2f..%2fsecret.txt",
        b"/..%5csecret.txt",
        b"/..\\secret.txt",
        b"/sub/..\\..\\secret.txt",
        b"/%00",
        b"/data.bin%00.txt",
        b"//etc/passwd",
        b"/%2fetc%2fpasswd",
        b"/.env",
        b"/%2eenv",
        b"/.hidden/x.txt",
        b"/sub/./../.env",
    ],
)
def test_traversal_and_hidden_file_attempts_are_refused(static: Any, target: bytes) -> None:
    response = raw_get(static.port, target)
    status = int(response.split(b" ", 2)[1])
    assert status in (400, 404), response[:200]
    assert b"TOP SECRET" not in response and b"SECRET=1" not in response
    assert b"root:" not in response and b"Traceback" not in response


def test_symlink_inside_the_root_is_served(serve: Any, site: Path) -> None:
    (site / "link.bin").symlink_to(site / "data.bin")
    (site / "sublink").symlink_to(site / "sub")
    server = serve(StaticFiles(site))
    assert get(server.url + "/link.bin").content == DATA
    assert get(server.url + "/sublink/page.txt").text == "sub page"


def test_symlink_leading_outside_is_404_unless_followed(serve: Any, site: Path) -> None:
    (site / "out.txt").symlink_to(site.parent / "secret.txt")
    (site / "outdir").symlink_to(site.parent)
    strict = serve(StaticFiles(site))
    assert get(strict.url + "/out.txt").status_code == 404
    assert get(strict.url + "/outdir/secret.txt").status_code == 404
    relaxed = serve(StaticFiles(site, follow_symlinks=True))
    assert get(relaxed.url + "/out.txt").text == "TOP SECRET"
    assert get(relaxed.url + "/outdir/secret.txt").text == "TOP SECRET"


def test_dotfiles_are_served_with_show_hidden_and_well_known_always(serve: Any, site: Path) -> None:
    (site / ".well-known").mkdir()
    (site / ".well-known" / "security.txt").write_text("contact")
    assert get(serve(StaticFiles(site)).url + "/.well-known/security.txt").text == "contact"
    assert get(serve(StaticFiles(site, show_hidden=True)).url + "/.env").text == "SECRET=1"


def test_permission_error_is_403_and_other_errors_404(serve: Any, site: Path) -> None:
    app = StaticFiles(site)

    def denied(path: str) -> int:
        raise PermissionError(13, "Permission denied", path)

    app._open = denied  # type: ignore[method-assign]
    server = serve(app)
    assert get(server.url + "/data.bin").status_code == 403
    assert get(server.url + "/" + "x" * 5000).status_code == 404  # ENAMETOOLONG
    assert get(server.url + "/data.bin/x").status_code == 404  # ENOTDIR


# -- the remembered response heads (a GET without conditional, range or coding headers) ------


def split_response(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split(b" ", 2)[1]), fields, body


def plain_get(server: Any, target: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """A GET with none of the headers that rule out the shortcut (httpx sends Accept-Encoding)."""
    return split_response(raw_get(server.port, target.encode()))


def test_a_plain_get_is_remembered_and_served_again_the_same(serve: Any, site: Path) -> None:
    app = StaticFiles(site)
    server = serve(app)
    first = plain_get(server, "/data.bin")
    assert "/data.bin" in app._known
    second = plain_get(server, "/data.bin")
    assert first[0] == second[0] == 200
    assert second[2] == DATA
    assert first[1].pop(b"date", None) is not None and second[1].pop(b"date", None) is not None
    assert first[1] == second[1]


@pytest.fixture(params=["app", "server"])
def files_server(request: pytest.FixtureRequest, serve: Any, site: Path) -> Any:
    """A server for ``site``: StaticFiles as its app, or the server's own folder (``--static``),
    whose remembered plain GETs the server answers without running the app."""
    if request.param == "app":
        return serve(StaticFiles(site))
    return serve(None, static=str(site))


@pytest.fixture
def app_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that ran a StaticFiles app."""
    calls: list[str] = []
    original = StaticFiles.__call__

    async def counted(self: StaticFiles, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            calls.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(StaticFiles, "__call__", counted)
    return calls


def test_the_server_answers_its_own_remembered_files_without_the_app(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    server = serve(None, static=str(site))
    first = plain_get(server, "/data.bin")
    second = plain_get(server, "/data.bin")
    assert app_calls == ["/data.bin"]
    assert first[0] == second[0] == 200 and first[2] == second[2] == DATA
    assert first[1].pop(b"date") and second[1].pop(b"date")
    assert first[1] == second[1]
    # Pipelined on one connection, and HTTP/1.0 (the server closes after the response).
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + b"GET /app.js HTTP/1.0\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(DATA) == 2 and received.count(b"HTTP/1.1 200 OK") == 3
    assert received.endswith((site / "app.js").read_bytes())
    # What is not a plain GET of a remembered file still runs the app.
    assert raw_get(server.port, b"/data.bin", method=b"HEAD").endswith(b"\r\n\r\n")
    assert b" 206 " in raw_get(server.port, b"/data.bin", b"Range: bytes=0-9\r\n")
    assert app_calls == ["/data.bin", "/app.js", "/data.bin", "/data.bin"]


def test_mounted_folders_are_answered_below_the_root_path(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"app"})

    server = serve(app, mounts=(f"/static={site}",), root_path="/api", lifespan="off")
    for _ in range(3):
        status, _, body = plain_get(server, "/static/sub/page.txt")
        assert (status, body) == (200, b"sub page")
    assert plain_get(server, "/staticx/sub/page.txt")[2] == b"app"
    assert app_calls == ["/api/static/sub/page.txt"] and seen == ["/api/staticx/sub/page.txt"]


@contextlib.contextmanager
def access_log_lines() -> Iterator[list[str]]:
    """The access log's messages, captured while inside."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("asgiserve.access")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:], logger.propagate = [Capture()], False
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def test_answered_files_are_logged_with_the_forwarded_client(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    with access_log_lines() as lines:
        server = serve(
            None, static=str(site), access_log=True, access_log_format="{client} {status} {bytes}"
        )
        for _ in range(2):
            raw_get(server.port, b"/app.js", b"X-Forwarded-For: 203.0.113.9\r\n")
        server.stop()
    size = (site / "app.js").stat().st_size
    assert lines == [f"203.0.113.9:0 200 {size}"] * 2
    assert len(app_calls) == 1


def slow_reader_asking(port: int, target: bytes) -> socket.socket:
    """A connection with a small receive buffer (the server must wait for it) that has sent
    a GET of ``target`` with ``Connection: close``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return sock


def test_a_large_answered_file_waits_for_a_slow_client(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    big = os.urandom(1 << 20) * 8
    (site / "big.bin").write_bytes(big)
    server = serve(None, static=str(site))
    for _ in range(2):
        with slow_reader_asking(server.port, b"/big.bin") as sock:
            received = bytearray()
            time.sleep(0.2)  # the socket buffers fill: the rest must wait for us
            while chunk := sock.recv(1 << 16):
                received += chunk
        assert split_response(bytes(received))[2] == big
    assert app_calls == ["/big.bin"]
    # The server is still serving (the task that finished the file is gone).
    assert plain_get(server, "/big.bin")[2] == big


def held_descriptors(folder: Path) -> list[str]:
    """The files under ``folder`` this process has open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                held.append(target)
    return sorted(held)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_answered_files_keep_a_bounded_number_of_descriptors(serve: Any, site: Path) -> None:
    server = serve(None, static=str(site), lifespan="on", static_open_files=2)
    names = ("data.bin", "app.js", "sub/page.txt")
    for _ in range(2):  # the first GET of each remembers it, the second borrows it
        for name in names:
            assert plain_get(server, "/" + name)[0] == 200
    assert held_descriptors(site) == sorted(str(site / n) for n in ("app.js", "sub/page.txt"))
    # A held file that is deleted is let go of at its next request.
    (site / "app.js").unlink()
    assert plain_get(server, "/app.js")[0] == 404
    assert held_descriptors(site) == [str(site / "sub" / "page.txt")]
    server.stop()  # lifespan shutdown closes the rest
    assert held_descriptors(site) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_descriptors_are_kept_with_static_open_files_0(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    server = serve(None, static=str(site), static_open_files=0)
    for _ in range(3):
        assert plain_get(server, "/data.bin")[2] == DATA
    assert held_descriptors(site) == []
    assert app_calls == ["/data.bin"] * 3  # the app answers each, opening the file itself


def get_request(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def send_in_one_turn(server: Any, sends: list[tuple[RawClient, bytes]]) -> None:
    """Send each of ``sends`` on its (already accepted) connection while the server's event
    loop is held up, so that the server reads them all in the same turn of its loop."""
    holding = threading.Event()

    def hold() -> None:
        holding.set()
        time.sleep(0.3)

    server.call(hold)
    assert holding.wait(5)
    for client, data in sends:
        client.send(data)


@dataclass
class FileStarts:
    """Each file body the server starts sending (``os.sendfile`` at offset 0): the socket it
    goes to and how many requests the server had read by then. The server's own answers are
    watched where they leave the process, not inside the connection, whose class the
    compiled build makes native (a patched method would be bypassed by native calls)."""

    server: Any = None
    starts: list[tuple[int, int]] = field(default_factory=list)

    def watch(self, server: Any) -> None:
        self.server = server
        del self.starts[:]

    def requests_read_at_first_start(self) -> list[int]:
        """For each socket in the order its first body started: the requests read by then."""
        first: dict[int, int] = {}
        for sock_fd, read in self.starts:
            first.setdefault(sock_fd, read)
        return list(first.values())

    def requests_read(self) -> int:
        return int(self.server.server.state.total_requests)


@pytest.fixture
def file_starts(monkeypatch: pytest.MonkeyPatch) -> FileStarts:
    log = FileStarts()
    real_sendfile = os.sendfile

    def recording(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        if offset == 0 and log.server is not None:
            log.starts.append((out_fd, log.requests_read()))
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", recording)
    return log


def test_answers_made_in_one_turn_of_the_loop_are_sent_together(
    serve: Any, site: Path, backend: Any, file_starts: FileStarts
) -> None:
    # The first goes out at once; the others wait until every request read in that turn has
    # been answered, then go out one after the other (one wake-up of the client per burst).
    server = serve(None, static=str(site))
    clients = [RawClient(server.port) for _ in range(5)]
    try:
        for client in clients:  # accepted, and data.bin remembered
            client.send(get_request(b"/data.bin"))
            assert client.read_response().body == DATA
        file_starts.watch(server)
        send_in_one_turn(server, [(client, get_request(b"/data.bin")) for client in clients])
        for client in clients:
            response = client.read_response()
            assert (response.status, response.body) == (200, DATA)
        # Kept alive: the next request on each is answered too.
        for client in clients:
            client.send(get_request(b"/app.js"))
            assert client.read_response().body == (site / "app.js").read_bytes()
    finally:
        for client in clients:
            client.close()
    # The first answer left when its own request had been read (5 before it), the others
    # once all five had been.
    assert file_starts.requests_read_at_first_start()[:5] == [6] + [10] * 4


def test_a_waiting_answer_whose_descriptor_was_let_go_is_answered_by_the_app(
    serve: Any,
    site: Path,
    backend: Any,
    app_calls: list[str],
    file_starts: FileStarts,
) -> None:
    # One descriptor kept: in one turn each request for the other file closes the one before,
    # so the descriptor an answer was made with may be closed (its number even reused) by
    # the time the answer is sent. It must never be used then.
    server = serve(None, static=str(site), static_open_files=1)
    script = (site / "app.js").read_bytes()
    targets = [b"/data.bin", b"/app.js", b"/data.bin", b"/app.js"]
    clients = [RawClient(server.port) for _ in targets]
    try:
        for client, target in zip(clients, targets, strict=True):
            client.send(get_request(target))
            client.read_response()
        del app_calls[:]
        file_starts.watch(server)
        send_in_one_turn(
            server,
            [
                (client, get_request(target))
                for client, target in zip(clients, targets, strict=True)
            ],
        )
        bodies = [client.read_response().body for client in clients]
    finally:
        for client in clients:
            client.close()
    assert bodies == [DATA, script, DATA, script]
    # One answer left at once, the three others (or the app's answers standing in for them)
    # at the end of the turn, when all four requests had been read.
    assert file_starts.requests_read_at_first_start() == [5, 8, 8, 8]
    # Whatever order the server read them in, the last request closed the other file's
    # descriptor: the app answered the waiting requests for that file.
    assert app_calls and len(set(app_calls)) == 1 and app_calls[0] in ("/data.bin", "/app.js")
    # The app closes the file it opened once its response is done, maybe just after we got it.
    deadline = time.monotonic() + 5
    while len(held_descriptors(site)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(held_descriptors(site)) == 1


def test_requests_pipelined_behind_a_waiting_answer_come_after_it(
    serve: Any, site: Path, backend: Any, file_starts: FileStarts
) -> None:
    server = serve(None, static=str(site))
    first, second = RawClient(server.port), RawClient(server.port)
    try:
        for client, target in ((first, b"/data.bin"), (second, b"/app.js")):
            client.send(get_request(target))
            client.read_response()
        file_starts.watch(server)
        send_in_one_turn(
            server,
            [
                (first, get_request(b"/data.bin")),
                (
                    second,
                    get_request(b"/app.js")
                    + get_request(b"/sub/page.txt")
                    + b"GET /app.js HTTP/1.1\r\n\r\n",  # no Host: 400
                ),
            ],
        )
        assert first.read_response().body == DATA
        responses = [second.read_response() for _ in range(3)]
        assert second.closed()
    finally:
        first.close()
        second.close()
    assert [(r.status, r.body) for r in responses[:2]] == [
        (200, (site / "app.js").read_bytes()),
        (200, b"sub page"),
    ]
    assert responses[2].status == 400
    # The connection read first was answered at once; the other's answer waited for the end
    # of the turn, when every request of both had been read.
    assert file_starts.requests_read_at_first_start() == [3, file_starts.requests_read()]


def test_a_failing_file_send_aborts_that_response_only(
    serve: Any, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk error (or a file cut short between the check and the send) while the server
    # answers on its own: logged, that connection aborted, the server goes on.
    errors: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = Capture()
    logging.getLogger("asgiserve.error").addHandler(handler)
    try:
        server = serve(None, static=str(site))
        assert plain_get(server, "/data.bin")[2] == DATA  # remembered
        real_sendfile = os.sendfile

        def failing(*args: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "sendfile", failing)
        client = RawClient(server.port)
        try:
            client.send(b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            assert DATA not in client.recv_until_closed()
        finally:
            client.close()
        monkeypatch.setattr(os, "sendfile", real_sendfile)
        assert plain_get(server, "/data.bin")[2] == DATA
    finally:
        logging.getLogger("asgiserve.error").removeHandler(handler)
    assert errors == ["Exception sending a file"]


def test_a_remembered_file_replaced_by_another_is_served_fresh(
    files_server: Any, site: Path
) -> None:
    # An editor's save: a new file renamed over the old one, here with the same size and
    # times, so only the inode tells (the server still holds the old one open).
    path = site / "data.bin"
    assert plain_get(files_server, "/data.bin")[2] == DATA
    assert plain_get(files_server, "/data.bin")[2] == DATA
    before = path.stat()
    new = site / "new.tmp"
    new.write_bytes(bytes(reversed(DATA)))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, path)
    assert plain_get(files_server, "/data.bin")[2] == bytes(reversed(DATA))


def test_a_file_still_being_sent_survives_its_replacement(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    # The rest of a file that waits for a slow client is sent from a descriptor of its own:
    # the one the server borrowed is closed when the file is replaced and asked for again.
    old = os.urandom(1 << 20) * 8
    (site / "big.bin").write_bytes(old)
    server = serve(None, static=str(site))
    assert plain_get(server, "/big.bin")[2] == old  # remembered
    with slow_reader_asking(server.port, b"/big.bin") as sock:
        received = bytearray(sock.recv(1 << 16))
        time.sleep(0.2)  # the socket buffers fill: the rest waits
        new = site / "big.tmp"
        new.write_bytes(b"new")
        os.replace(new, site / "big.bin")
        assert plain_get(server, "/big.bin")[2] == b"new"
        while chunk := sock.recv(1 << 16):
            received += chunk
    assert split_response(bytes(received))[2] == old
    assert app_calls == ["/big.bin", "/big.bin"]


def test_answered_files_respect_the_concurrency_limit(serve: Any, site: Path) -> None:
    server = serve(None, static=str(site), limit_concurrency=1)
    assert plain_get(server, "/app.js")[0] == 200
    assert plain_get(server, "/app.js")[0] == 200
    with socket.create_connection(("127.0.0.1", server.port)):
        time.sleep(0.1)  # accepted: now two connections
        assert plain_get(server, "/app.js")[0] == 503


def test_a_remembered_file_changed_in_place_is_served_fresh(files_server: Any, site: Path) -> None:
    path = site / "data.bin"
    server = files_server
    assert plain_get(server, "/data.bin")[2] == DATA
    before = path.stat()
    changed = bytes(reversed(DATA))
    path.write_bytes(changed)
    # Same size and modification time as before: only the change time tells.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert plain_get(server, "/data.bin")[2] == changed
    path.write_bytes(b"shorter")
    status, fields, body = plain_get(server, "/data.bin")
    assert (status, body, fields[b"content-length"]) == (200, b"shorter", b"7")


def test_a_remembered_file_deleted_is_404(files_server: Any, site: Path) -> None:
    server = files_server
    assert plain_get(server, "/app.js")[0] == 200
    (site / "app.js").unlink()
    assert plain_get(server, "/app.js")[0] == 404


def test_a_remembered_file_replaced_by_a_link_leading_outside_is_404(
    files_server: Any, site: Path
) -> None:
    server = files_server
    assert plain_get(server, "/app.js")[0] == 200
    (site / "app.js").unlink()
    (site / "app.js").symlink_to(site.parent / "secret.txt")
    status, _, body = plain_get(server, "/app.js")
    assert status == 404 and b"TOP SECRET" not in body


def test_a_folder_of_a_remembered_file_replaced_by_a_link_leading_outside_is_404(
    files_server: Any, site: Path, tmp_path: Path
) -> None:
    server = files_server
    assert plain_get(server, "/sub/page.txt")[2] == b"sub page"
    # Outside the root, a file of the same name, size and times: only its identity differs.
    outside = tmp_path / "outside"
    outside.mkdir()
    lure = outside / "page.txt"
    lure.write_bytes(b"OUT page")
    before = (site / "sub" / "page.txt").stat()
    os.utime(lure, ns=(before.st_atime_ns, before.st_mtime_ns))
    (site / "sub").rename(tmp_path / "old-sub")
    (site / "sub").symlink_to(outside)
    status, _, body = plain_get(server, "/sub/page.txt")
    assert status == 404 and b"OUT" not in body


def test_routes_through_links_are_not_remembered(serve: Any, site: Path) -> None:
    (site / "other").mkdir()
    (site / "other" / "page.txt").write_text("other page")
    (site / "current").symlink_to(site / "sub")
    app = StaticFiles(site)
    server = serve(app)
    assert plain_get(server, "/current/page.txt")[2] == b"sub page"
    assert not app._known
    (site / "current").unlink()
    (site / "current").symlink_to(site / "other")
    assert plain_get(server, "/current/page.txt")[2] == b"other page"


def test_remembered_files_are_bounded(
    serve: Any, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(static_module, "REMEMBERED_FILES", 2)
    app = StaticFiles(site)
    server = serve(app)
    for name in ("/data.bin", "/app.js", "/sub/page.txt"):
        assert plain_get(server, name)[0] == 200
    assert list(app._known) == ["/app.js", "/sub/page.txt"]
    assert plain_get(server, "/data.bin")[2] == DATA


def test_remembered_headers_are_not_changed_by_middleware(serve: Any, site: Path) -> None:
    app = StaticFiles(site)

    async def add_header(scope: Any, receive: Any, send: Any) -> None:
        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-tag", b"1"))  # in place, as MutableHeaders does
            await send(message)

        await app(scope, receive, tagged)

    server = serve(add_header)
    for _ in range(3):
        response = raw_get(server.port, b"/app.js")
        assert response.count(b"x-tag: 1") == 1


def test_special_files_are_not_served(serve: Any, site: Path) -> None:
    os.mkfifo(site / "fifo")
    assert get(serve(StaticFiles(site)).url + "/fifo").status_code == 404


def test_html_mode_serves_404_html_for_missing_files(serve: Any, site: Path) -> None:
    (site / "404.html").write_text("custom not found")
    response = get(serve(StaticFiles(site)).url + "/nope")
    assert response.status_code == 404
    assert response.text == "custom not found"
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def test_cache_control_is_configurable(serve: Any, site: Path) -> None:
    server = serve(StaticFiles(site, cache_control="public, max-age=3600"))
    assert get(server.url + "/data.bin").headers["cache-control"] == "public, max-age=3600"
    bare = serve(StaticFiles(site, cache_control=None))
    assert "cache-control" not in get(bare.url + "/data.bin").headers


def test_missing_directory_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        StaticFiles(tmp_path / "nope")


def test_lifespan_and_websocket_scopes_are_handled(serve: Any, site: Path, raw: Any) -> None:
    server = serve(StaticFiles(site), lifespan="on")  # startup completes
    client = raw(server.port)
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert client.read_response().status == 403


# -- mounting ----------------------------------------------------------------------------------


def test_mounted_in_starlette(serve: Any, site: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/static", app=StaticFiles(site), name="static")])
    server = serve(app, root_path="/prefix")
    assert get(server.url + "/static/sub/page.txt").text == "sub page"
    assert get(server.url + "/static/data.bin", headers={"Range": "bytes=1-2"}).content == DATA[1:3]
    response = get(server.url + "/static/sub")
    assert response.headers["location"] == "sub/"
    assert get(server.url + "/static/../secret.txt").status_code == 404


def test_route_path_handles_both_root_path_conventions() -> None:
    # ASGI 2024+: path includes root_path; older servers: it does not.
    assert route_path({"path": "/static/a.txt", "root_path": "/static"}) == "/a.txt"
    assert route_path({"path": "/static", "root_path": "/static"}) == ""
    assert route_path({"path": "/a.txt", "root_path": "/static"}) == "/a.txt"
    assert route_path({"path": "/staticfile", "root_path": "/static"}) == "/staticfile"


def test_mounts_serve_folders_in_front_of_the_app(serve: Any, site: Path) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            seen.append(message["type"])
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    mounted = Mounts(
        app, [("/static", StaticFiles(site)), ("/static/deep", StaticFiles(site / "sub"))]
    )
    server = serve(mounted, lifespan="on")
    assert get(server.url + "/static/data.bin").content == DATA
    assert get(server.url + "/static/deep/page.txt").text == "sub page"
    assert get(server.url + "/static").status_code == 301
    assert get(server.url + "/staticfile").text == "app"
    assert get(server.url + "/other").text == "app"
    assert seen == ["lifespan.startup", "/staticfile", "/other"]


def test_mount_prefixes_are_checked() -> None:
    with pytest.raises(ValueError, match="must start with"):
        Mounts(lambda: None, [("static/", lambda: None)])  # type: ignore[list-item, arg-type]


def test_config_static_and_mounts_are_validated(tmp_path: Path) -> None:
    assert Config.from_options(None, static=str(tmp_path)).static == str(tmp_path)
    assert Config.from_options("m:a", mounts="/s=dir").mounts == ("/s=dir",)
    for options, message in [
        ({}, "an app is required"),
        ({"static": "dir", "app": "m:a"}, "give an app or --static"),
        ({"mounts": ["static=dir"]}, "--mount 'static=dir'"),
        ({"mounts": ["/static"]}, "expected PREFIX=DIR"),
        ({"mounts": ["/=dir"]}, "use --static"),
        ({"mounts": ["/a=x", "/a=y"]}, "more than once"),
        ({"static": "dir", "static_open_files": -1}, "--static-open-files must be"),
        ({"static": "dir", "static_open_files": 1.5}, "--static-open-files must be"),
    ]:
        app = options.pop("app", None if "mounts" not in options else "m:a")
        with pytest.raises(ConfigError, match=message):
            Config.from_options(app, **options)
    # Workers import the app themselves: with static there is none to import.
    assert Config.from_options(None, static="dir", workers=2).workers == 2


# -- other servers -----------------------------------------------------------------------------


def test_runs_on_uvicorn_without_the_file_extensions(site: Path) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(StaticFiles(site), log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        assert get(url + "/data.bin").content == DATA
        response = get(url + "/data.bin", headers={"Range": "bytes=0-9,20-29"})
        assert response.status_code == 206
        assert DATA[20:30] in response.content
        assert get(url + "/sub?q=1").headers["location"] == "sub/?q=1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# == the benchmark report =======================================================================


def test_benchmark_report_rewrite_keeps_the_static_section(tmp_path: Path) -> None:
    """benchmarks/run.py rewrites RESULTS.md whole; the section static.py wrote survives it."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        harness = importlib.import_module("run")
    finally:
        sys.path.pop(0)
    report = tmp_path / "RESULTS.md"
    report.write_text("# old results\n\nold table\n")
    harness.write_section(report, "static.py", "## Static files\n\nfirst\n")
    harness.write_section(report, "static.py", "## Static files\n\nsecond\n")
    harness.write_report(report, "# new results\n\nnew table\n")
    text = report.read_text()
    assert text.startswith("# new results\n\nnew table\n") and "old table" not in text
    assert text.count("<!-- static.py: begin -->") == 1 and "first" not in text
    assert "<!-- static.py: begin -->\n## Static files\n\nsecond\n<!-- static.py: end -->\n" in text


# -- who the server may answer for (issue 17) ------------------------------------------------------

AUTHORISED = b"Authorization: Bearer letmein\r\n"


@pytest.mark.parametrize("mounted", [False, True], ids=["alone", "with-mount"])
@pytest.mark.parametrize("shape", ["subclass", "getattr-wrapper"])
def test_a_users_app_that_checks_credentials_runs_for_every_request(
    serve: Any, site: Path, tmp_path: Path, shape: str, mounted: bool
) -> None:
    app = PasswordStaticFiles(site) if shape == "subclass" else PasswordWrapper(StaticFiles(site))
    other = tmp_path / "other"
    other.mkdir()
    server = serve(app, mounts=(f"/other={other}",) if mounted else ())
    for _ in range(3):
        # An authorised plain GET is what gets a file remembered; the anonymous one after it
        # must still meet the password.
        status, _, body = split_response(raw_get(server.port, b"/data.bin", AUTHORISED))
        assert (status, body) == (200, DATA)
        assert split_response(raw_get(server.port, b"/data.bin"))[0] == 401


def test_only_the_servers_own_static_apps_are_answered_for() -> None:
    from asgiserve.apps.mounts import served_files

    files = StaticFiles(".")
    assert served_files(files) == files.borrow_remembered
    mounts = Mounts(files, [("/s", StaticFiles("."))])
    assert served_files(mounts) == mounts.borrow_remembered
    assert served_files(PasswordStaticFiles(".")) is None
    assert served_files(PasswordWrapper(files)) is None
    # Through Mounts: only a mount that is exactly StaticFiles, never the main app.
    locked = Mounts(files, [("/locked", PasswordStaticFiles("."))])
    assert locked.borrow_remembered("/locked/x", []) is None
    assert locked.borrow_remembered("/x", []) is None


# -- what browsers send takes the shortcut, with the same answer (issue 17) -------------------------

# A browser's request headers for a style sheet (Chromium 131), minus Host and Connection.
BROWSER = (
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Accept: text/css,*/*;q=0.1\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"Sec-Fetch-Dest: style\r\n"
    b"Referer: http://t/\r\n"
    b"Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n"
    b"Cookie: session=4f2a9c; theme=dark\r\n"
)


def browser_headers(accept_encoding: bytes | None) -> bytes:
    """:data:`BROWSER`'s header lines, with this ``Accept-Encoding`` (None: without one)."""
    if accept_encoding is None:
        return BROWSER
    return BROWSER + b"Accept-Encoding: %s\r\n" % accept_encoding


def read_one_response(sock: socket.socket) -> bytes:
    """One response from a kept-alive connection: a 304's head, or a head and its body (with
    a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, fields, _ = split_response(head + b"\r\n\r\n")
    length = 0 if status == 304 else int(fields[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    assert len(body) == length
    return head + b"\r\n\r\n" + body


def without_date(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date: ")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
def style(site: Path) -> bytes:
    text = b"body{color:#123456}\n" * 200
    (site / "style.css").write_bytes(text)
    (site / "style.css.gz").write_bytes(gzip.compress(text))
    (site / "style.css.br").write_bytes(b"BROTLI" * 50)
    return text


@pytest.mark.parametrize(
    ("target", "accept_encoding", "coding"),
    [
        (b"/style.css", b"gzip, deflate, br, zstd", b"br"),
        (b"/style.css", b"gzip, deflate", b"gzip"),
        (b"/style.css", None, None),
        (b"/sub/page.txt", b"gzip, deflate, br, zstd", None),
    ],
)
def test_a_browsers_request_takes_the_shortcut_with_the_apps_answer(
    backend: tuple[str, str],
    serve: Any,
    site: Path,
    style: bytes,
    app_calls: list[str],
    target: bytes,
    accept_encoding: bytes | None,
    coding: bytes | None,
) -> None:
    server = serve(None, static=str(site))
    headers = browser_headers(accept_encoding)
    request = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n%s\r\n" % (target, headers)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        by_app = read_one_response(sock)
        answered = []
        for _ in range(3):
            sock.sendall(request)
            answered.append(read_one_response(sock))
    assert app_calls == [target.decode()]  # the other three were the server's own answers
    status, fields, _ = split_response(by_app)
    assert status == 200
    assert fields.get(b"content-encoding") == coding
    for response in answered:
        assert without_date(response) == without_date(by_app)


def test_each_representation_is_remembered_for_its_own_clients(
    serve: Any, site: Path, style: bytes, app_calls: list[str]
) -> None:
    server = serve(None, static=str(site))
    bodies = {b"br": b"BROTLI" * 50, b"gzip": (site / "style.css.gz").read_bytes(), None: style}
    codings = {b"br": b"br", b"gzip": b"gzip", b"identity": None, b"gzip;q=0, br;q=0": None}
    for _ in range(2):
        for accept, coding in codings.items():
            response = raw_get(server.port, b"/style.css", b"Accept-Encoding: " + accept + b"\r\n")
            status, fields, body = split_response(response)
            assert (status, fields.get(b"content-encoding"), body) == (200, coding, bodies[coding])
            assert fields[b"vary"] == b"accept-encoding"
    # One app call per representation: both values without a coding choose the file itself.
    assert app_calls == ["/style.css"] * 3


def test_a_sibling_added_after_remembering_is_served_from_then_on(
    files_server: Any, site: Path
) -> None:
    server = files_server
    (site / "late.css").write_bytes(b"p{}" * 100)
    for _ in range(2):
        status, fields, _ = split_response(
            raw_get(server.port, b"/late.css", b"Accept-Encoding: gzip\r\n")
        )
        assert status == 200 and b"vary" not in fields
    (site / "late.css.gz").write_bytes(gzip.compress(b"p{}" * 100))
    status, fields, body = split_response(
        raw_get(server.port, b"/late.css", b"Accept-Encoding: gzip\r\n")
    )
    assert (fields.get(b"content-encoding"), fields.get(b"vary")) == (b"gzip", b"accept-encoding")
    assert gzip.decompress(body) == b"p{}" * 100


def test_other_conditional_and_range_requests_still_run_the_app(
    serve: Any, site: Path, style: bytes, app_calls: list[str]
) -> None:
    server = serve(None, static=str(site))
    assert plain_get(server, "/style.css")[0] == 200
    status, fields, _ = plain_get(server, "/style.css")
    etag, last_modified = fields[b"etag"], fields[b"last-modified"]
    assert app_calls == ["/style.css"]
    declined = [
        (b"GET", b"Range: bytes=0-1\r\n", 206),
        (b"GET", b"Range: bytes=0-1\r\nIf-Range: " + etag + b"\r\n", 206),
        (b"GET", b"If-Match: " + etag + b"\r\n", 200),
        (b"GET", b'If-Match: "other"\r\n', 412),
        (b"GET", b"If-Unmodified-Since: " + last_modified + b"\r\n", 200),
        (b"GET", b"If-None-Match: " + etag + b"\r\nIf-Match: " + etag + b"\r\n", 304),
        (b"HEAD", b"If-None-Match: " + etag + b"\r\n", 304),
    ]
    for method, extra, expected in declined:
        response = raw_get(server.port, b"/style.css", extra, method=method)
        assert split_response(response)[0] == expected, extra
    assert app_calls == ["/style.css"] * (1 + len(declined))


# -- revalidation answered by the server (issue 17) ----------------------------------------------


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return read_one_response(sock)


def revalidations(etag: bytes, last_modified: bytes) -> list[tuple[bytes, int]]:
    """Validator headers a client may send with what it holds, and the status they get."""
    modified = int(parsedate_to_datetime(last_modified.decode()).timestamp())
    later = formatdate(modified + 3600, usegmt=True).encode()
    earlier = formatdate(modified - 3600, usegmt=True).encode()
    other = b'"0-0"'
    inm, ims = b"If-None-Match: ", b"If-Modified-Since: "
    return [
        # What a browser sends: both; If-None-Match decides (RFC 9110 section 13.2.2).
        (inm + etag + b"\r\n" + ims + last_modified + b"\r\n", 304),
        (inm + etag + b"\r\n", 304),
        (inm + b"W/" + etag + b"\r\n", 304),  # weak comparison (section 13.1.2)
        (inm + other + b", " + etag + b"\r\n", 304),  # a list
        (inm + other + b"\r\n" + inm + etag + b"\r\n", 304),  # a list over two fields
        (inm + b"*\r\n", 304),
        (inm + other + b"\r\n", 200),
        (inm + etag + b"\r\n" + ims + earlier + b"\r\n", 304),
        (inm + other + b"\r\n" + ims + last_modified + b"\r\n", 200),
        (ims + last_modified + b"\r\n", 304),
        (ims + later + b"\r\n", 304),
        (ims + earlier + b"\r\n", 200),
        (ims + b"yesterday\r\n", 200),
    ]


@pytest.mark.parametrize(
    ("target", "accept_encoding"),
    [
        (b"/style.css", b"gzip, deflate, br, zstd"),
        (b"/style.css", None),
        (b"/sub/page.txt", b"gzip, deflate, br, zstd"),
    ],
)
def test_a_revalidation_is_answered_by_the_server_as_the_app_answers_it(
    backend: tuple[str, str],
    serve: Any,
    site: Path,
    style: bytes,
    app_calls: list[str],
    target: bytes,
    accept_encoding: bytes | None,
) -> None:
    # The server's own answer (--static) against the full lookup's (StaticFiles as the
    # user's app, which the server never answers for), byte for byte but the Date.
    answering = serve(None, static=str(site))
    by_app = serve(StaticFiles(site))
    browser = browser_headers(accept_encoding)
    line = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n" % target
    first = exchange(answering.port, line + browser + b"\r\n")  # remembered
    status, fields, _ = split_response(first)
    assert status == 200
    cases = revalidations(fields[b"etag"], fields[b"last-modified"])
    http10 = b"GET %s HTTP/1.0\r\nHost: t\r\n" % target
    cases.append((cases[0][0], 304))  # HTTP/1.0 (a keep-alive header of its own), below
    del app_calls[:]
    for i, (validators, expected) in enumerate(cases):
        request = (http10 if i == len(cases) - 1 else line) + browser + validators + b"\r\n"
        answered = exchange(answering.port, request)
        assert app_calls == [], validators  # the server answered it itself
        expected_response = exchange(by_app.port, request)
        del app_calls[:]
        assert split_response(answered)[0] == expected, validators
        assert without_date(answered) == without_date(expected_response), validators


def test_a_revalidation_of_a_changed_file_gets_the_new_file(files_server: Any, site: Path) -> None:
    server = files_server
    first = plain_get(server, "/app.js")
    etag = first[1][b"etag"]
    assert (
        split_response(raw_get(server.port, b"/app.js", b"If-None-Match: " + etag + b"\r\n"))[0]
        == 304
    )
    (site / "app.js").write_text("console.log(2) // changed")
    status, fields, body = split_response(
        raw_get(server.port, b"/app.js", b"If-None-Match: " + etag + b"\r\n")
    )
    assert (status, body) == (200, b"console.log(2) // changed")
    assert fields[b"etag"] != etag


def test_a_revalidation_of_a_file_whose_folder_was_moved_outside_is_404(
    files_server: Any, site: Path, tmp_path: Path
) -> None:
    server = files_server
    etag = plain_get(server, "/sub/page.txt")[1][b"etag"]
    revalidate = b"If-None-Match: " + etag + b"\r\n"
    assert split_response(raw_get(server.port, b"/sub/page.txt", revalidate))[0] == 304
    (site / "sub").rename(tmp_path / "moved-out")
    (site / "sub").symlink_to(tmp_path / "moved-out")
    assert split_response(raw_get(server.port, b"/sub/page.txt", revalidate))[0] == 404


def test_an_answered_revalidation_is_logged_as_a_304(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    with access_log_lines() as lines:
        server = serve(
            None, static=str(site), access_log=True, access_log_format="{status} {bytes}"
        )
        etag = plain_get(server, "/app.js")[1][b"etag"]
        raw_get(server.port, b"/app.js", b"If-None-Match: " + etag + b"\r\n")
        server.stop()
    size = (site / "app.js").stat().st_size
    assert lines == [f"200 {size}", "304 0"]
    assert app_calls == ["/app.js"]


# -- Vary on every response of a file with precompressed siblings (issue 17) ------------------------


def test_vary_is_sent_to_clients_without_accept_encoding(
    files_server: Any, site: Path, style: bytes
) -> None:
    server = files_server
    for method in (b"GET", b"GET", b"HEAD"):  # the second GET is answered from memory
        status, fields, _ = split_response(raw_get(server.port, b"/style.css", method=method))
        assert status == 200 and fields[b"vary"] == b"accept-encoding"
        assert b"content-encoding" not in fields
    # A file without siblings has no reason to vary.
    assert b"vary" not in plain_get(server, "/app.js")[1]


# -- folders changed under a remembered file (issue 17) ---------------------------------------------


def test_a_remembered_file_whose_folder_was_moved_outside_is_404(
    files_server: Any, site: Path, tmp_path: Path
) -> None:
    server = files_server
    for _ in range(2):
        assert plain_get(server, "/sub/page.txt")[2] == b"sub page"
    # The very same file (inode, times) now lies outside the root, reached through a link.
    (site / "sub").rename(tmp_path / "moved-out")
    (site / "sub").symlink_to(tmp_path / "moved-out")
    for _ in range(2):
        status, _, body = plain_get(server, "/sub/page.txt")
        assert status == 404 and b"sub page" not in body


def test_a_remembered_file_whose_grandparent_was_moved_outside_is_404(
    files_server: Any, site: Path, tmp_path: Path
) -> None:
    (site / "a" / "b").mkdir(parents=True)
    (site / "a" / "b" / "deep.txt").write_text("deep")
    server = files_server
    for _ in range(2):
        assert plain_get(server, "/a/b/deep.txt")[2] == b"deep"
    (site / "a").rename(tmp_path / "a-out")
    (site / "a").symlink_to(tmp_path / "a-out")
    assert plain_get(server, "/a/b/deep.txt")[0] == 404


# -- --follow-symlinks (issue 17) -------------------------------------------------------------------


def test_with_follow_symlinks_links_take_the_shortcut(
    serve: Any, site: Path, tmp_path: Path, app_calls: list[str]
) -> None:
    (site / "linked.bin").symlink_to(site / "data.bin")
    (site / "current").symlink_to(site / "sub")
    server = serve(None, static=str(site), follow_symlinks=True)
    for _ in range(3):
        assert plain_get(server, "/linked.bin")[2] == DATA
        assert plain_get(server, "/current/page.txt")[2] == b"sub page"
    assert app_calls == ["/linked.bin", "/current/page.txt"]
    # A link pointed elsewhere is seen at once.
    (site / "other").mkdir()
    (site / "other" / "page.txt").write_text("other page")
    (site / "current").unlink()
    (site / "current").symlink_to(site / "other")
    assert plain_get(server, "/current/page.txt")[2] == b"other page"
    (site / "linked.bin").unlink()
    (site / "linked.bin").symlink_to(site / "app.js")
    assert plain_get(server, "/linked.bin")[2] == (site / "app.js").read_bytes()


# -- lifespan through Mounts (issue 17) -------------------------------------------------------------


async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_mounted_folders_close_their_descriptors_at_shutdown(serve: Any, site: Path) -> None:
    server = serve(lifespan_app, mounts=(f"/static={site}",), lifespan="on")
    for _ in range(2):
        assert plain_get(server, "/static/data.bin")[2] == DATA
    assert plain_get(server, "/elsewhere")[2] == b"app"
    assert held_descriptors(site) == [str(site / "data.bin")]
    server.stop()
    assert held_descriptors(site) == []


# -- the listing page (issue 17; the browser's view is in tests/e2e/test_static_e2e.py) --------------


def test_listing_sort_comes_from_the_query_with_safe_defaults() -> None:
    from asgiserve.apps.listing import sort_from_query

    assert sort_from_query(b"") == ("name", False)
    assert sort_from_query(b"sort=size") == ("size", True)  # largest first on the first click
    assert sort_from_query(b"sort=date&order=asc") == ("date", False)
    assert sort_from_query(b"sort=name&order=desc") == ("name", True)
    assert sort_from_query(b"sort=%3Cscript%3E&order=sideways") == ("name", False)


def test_listing_keeps_folders_first_in_every_order() -> None:
    from asgiserve.apps.listing import sort_entries

    entries = [("b", False, 5, 3.0), ("A", False, 9, 1.0), ("z", True, 0, 2.0), ("c", True, 9, 0.0)]
    names = lambda sort: [entry[0] for entry in sort_entries(entries, sort)]  # noqa: E731
    assert names(("name", False)) == ["c", "z", "A", "b"]
    assert names(("name", True)) == ["z", "c", "b", "A"]
    assert names(("size", True)) == ["z", "c", "A", "b"]  # folders by name (their size is not)
    assert names(("date", False)) == ["c", "z", "A", "b"]


def test_listing_breadcrumbs_link_up_relatively_below_the_mount_point(
    serve: Any, site: Path
) -> None:
    (site / "sub" / "deeper").mkdir()
    server = serve(StaticFiles(site, listing=True, html=False), root_path="/files")
    page = get(server.url + "/sub/deeper/?sort=date").text  # the proxy took /files off
    heading = page[page.index("<h1>") : page.index("</h1>")]
    # The mount point is a link to the app's root; the current folder is not a link.
    assert '<a href="../../?sort=date&amp;order=desc">/files/</a>' in heading
    assert '<a href="../?sort=date&amp;order=desc">sub</a>' in heading
    assert '<span aria-current="page">deeper</span>' in heading
    assert "This folder is empty." in page
    assert "<title>Index of /files/sub/deeper/</title>" in page


def test_listing_survives_a_modification_time_no_calendar_holds() -> None:
    from asgiserve.apps.listing import render_listing

    page = render_listing([("odd", False, 1, 1e300)], base="", segments=[], sort=("date", True))
    assert b'href="odd"' in page


def test_a_revalidation_below_a_mount_is_answered_by_the_server(
    serve: Any, site: Path, app_calls: list[str]
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"app"})

    server = serve(app, mounts=(f"/static={site}",), lifespan="off")
    etag = plain_get(server, "/static/app.js")[1][b"etag"]
    revalidate = b"If-None-Match: " + etag + b"\r\n"
    for _ in range(2):
        assert split_response(raw_get(server.port, b"/static/app.js", revalidate))[0] == 304
    assert app_calls == ["/static/app.js"]


def test_request_headers_changed_in_place_are_read_again(site: Path) -> None:
    # The headers a remembered file was last looked up with are kept with what was found in
    # them; headers an app's scope holds as lists can change in place, so they never are.
    from asgiserve.apps.static import NotModified, RememberedFile

    app = StaticFiles(site)
    sent: list[dict[str, Any]] = []

    async def get() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/data.bin",
            "raw_path": b"/data.bin",
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "extensions": {},
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(get())  # a plain GET: the file is remembered
    etag = dict(sent[0]["headers"])[b"etag"]
    try:
        as_lists: list[Any] = [[b"if-none-match", etag]]
        assert isinstance(app.borrow_remembered("/data.bin", as_lists), NotModified)
        as_lists[0][1] = b'"other"'
        assert isinstance(app.borrow_remembered("/data.bin", as_lists), RememberedFile)

        as_tuples = [(b"if-none-match", etag)]
        assert isinstance(app.borrow_remembered("/data.bin", as_tuples), NotModified)
        assert isinstance(app.borrow_remembered("/data.bin", list(as_tuples)), NotModified)
        ranged = [*as_tuples, (b"range", b"bytes=0-1")]
        assert app.borrow_remembered("/data.bin", ranged) is None
        assert isinstance(app.borrow_remembered("/data.bin", list(as_tuples)), NotModified)
        assert isinstance(app.borrow_remembered("/data.bin", []), RememberedFile)
    finally:
        app.close()
