"""Websocket echo load generator (wrk cannot do websockets).

Many connections in one uvloop process, raw protocol objects, one pre-built masked frame per
run (the mask key is fixed for the run, so masking costs nothing per message), a bounded number
of messages in flight per connection, echoed messages counted per second.  Replies that arrive
in one read are answered with one ``transport.write`` so the client spends its CPU on syscalls,
not on Python.  The JSON it prints includes the client's own CPU use over the measured window:
well under 100 % means the client was not the bottleneck.

    python benchmarks/wsload.py --port 8000 --connections 32 --size 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import socket
import sys
import time

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MASK = b"\x37\xfa\x21\x3d"


def make_payload(size: int, text: bool) -> bytes:
    if text:
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    else:
        alphabet = bytes(range(256))
    return (alphabet * (size // len(alphabet) + 1))[:size]


def build_frame(payload: bytes, text: bool, mask: bytes = _MASK) -> bytes:
    """A complete client frame (FIN, masked)."""
    b0 = 0x81 if text else 0x82
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
    return head + mask + payload


def handshake_request(host: str, port: int, path: str = "/") -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # noqa: S324
    return request, accept


def check_handshake(head: bytes, accept: bytes) -> str | None:
    """None when ``head`` is a valid 101 answer for ``accept``, else the reason."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        return f"expected 101, got {lines[0][:80]!r}"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() != accept:
                return "bad sec-websocket-accept"
            return None
    return "no sec-websocket-accept header"


class _Bench:
    def __init__(self, connections: int) -> None:
        self.pending = connections
        self.ready = asyncio.get_running_loop().create_future()
        self.running = True
        self.errors: list[str] = []
        self.lost = 0


class WSClient(asyncio.Protocol):
    __slots__ = (
        "accept",
        "bench",
        "closing",
        "frame",
        "head",
        "inflight",
        "open",
        "partial",
        "received",
        "request",
        "skip",
        "transport",
    )

    def __init__(self, bench: _Bench, request: bytes, accept: bytes, frame: bytes, inflight: int):
        self.bench = bench
        self.request = request
        self.accept = accept
        self.frame = frame
        self.inflight = inflight
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.head = b""
        self.partial = b""
        self.skip = 0
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if not self.closing:
            self.bench.lost += 1
            if not self.open:
                self._fail(f"connection lost during handshake: {exc!r}")

    def _fail(self, reason: str) -> None:
        self.bench.errors.append(reason)
        if not self.bench.ready.done():
            self.bench.ready.set_exception(RuntimeError(reason))

    def start(self) -> None:
        if self.transport is not None:
            self.transport.write(self.frame * self.inflight)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            reason = check_handshake(self.head[:end], self.accept)
            if reason is not None:
                self._fail(reason)
                return
            self.open = True
            data = self.head[end + 4 :]
            self.head = b""
            bench = self.bench
            bench.pending -= 1
            if bench.pending == 0 and not bench.ready.done():
                bench.ready.set_result(None)
            if not data:
                return
        # Count complete (FIN) data frames; skip payloads without copying them.
        skip = self.skip
        n = len(data)
        if skip:
            if skip >= n:
                self.skip = skip - n
                return
            i = skip
            self.skip = 0
        else:
            i = 0
        if self.partial:
            data = self.partial + data[i:]
            self.partial = b""
            n = len(data)
            i = 0
        count = 0
        while i < n:
            if n - i < 2:
                self.partial = data[i:]
                break
            b0 = data[i]
            length = data[i + 1] & 0x7F
            if length < 126:
                pos = i + 2
            elif length == 126:
                if n - i < 4:
                    self.partial = data[i:]
                    break
                length = int.from_bytes(data[i + 2 : i + 4], "big")
                pos = i + 4
            else:
                if n - i < 10:
                    self.partial = data[i:]
                    break
                length = int.from_bytes(data[i + 2 : i + 10], "big")
                pos = i + 10
            end = pos + length
            opcode = b0 & 0x0F
            if opcode >= 8:  # control frame: need it whole
                if end > n:
                    self.partial = data[i:]
                    break
                if opcode == 9 and self.transport is not None:  # ping -> pong
                    self.transport.write(_pong(data[pos:end]))
                elif opcode == 8:
                    self.closing = True
                    if self.bench.running:
                        self.bench.errors.append("server sent close during the run")
                    if self.transport is not None:
                        self.transport.close()
                    return
                i = end
                continue
            if b0 & 0x80:
                count += 1
            if end > n:
                self.skip = end - n
                break
            i = end
        if count:
            self.received += count
            if self.bench.running and self.transport is not None:
                self.transport.write(self.frame * count if count > 1 else self.frame)


def _pong(payload: bytes) -> bytes:
    frame = bytearray(build_frame(payload, False))
    frame[0] = 0x8A
    return bytes(frame)


async def run_load(
    host: str,
    port: int,
    *,
    connections: int = 32,
    size: int = 64,
    text: bool = True,
    inflight: int = 4,
    duration: float = 10.0,
    path: str = "/",
    connect_timeout: float = 10.0,
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    bench = _Bench(connections)
    frame = build_frame(make_payload(size, text), text)
    clients: list[WSClient] = []

    async def connect() -> None:
        request, accept = handshake_request(host, port, path)
        client = WSClient(bench, request, accept, frame, inflight)
        await loop.create_connection(lambda: client, host, port)
        clients.append(client)

    result: dict[str, object] = {
        "connections": connections,
        "size": size,
        "text": text,
        "inflight": inflight,
    }
    try:
        await asyncio.wait_for(
            asyncio.gather(*(connect() for _ in range(connections))), connect_timeout
        )
        await asyncio.wait_for(bench.ready, connect_timeout)
    except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
        result["error"] = f"could not open {connections} websockets: {exc!r}"
        return result

    for client in clients:
        client.start()
    before = sum(c.received for c in clients)
    per_conn_before = [c.received for c in clients]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    per_conn = [c.received - b for c, b in zip(clients, per_conn_before, strict=True)]
    messages = sum(c.received for c in clients) - before
    bench.running = False

    # Polite close, bounded in time.
    close_frame = bytearray(build_frame(b"\x03\xe8", False))
    close_frame[0] = 0x88
    for client in clients:
        client.closing = True
        if client.transport is not None:
            client.transport.write(bytes(close_frame))
            client.transport.close()
    deadline = loop.time() + 1.0
    while any(c.transport is not None for c in clients) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result.update(
        {
            "duration": elapsed,
            "messages": messages,
            "msgs_per_sec": messages / elapsed,
            "bytes_per_sec": messages * size / elapsed,
            "conn_min": min(per_conn),
            "conn_max": max(per_conn),
            "client_cpu_pct": 100.0 * cpu / elapsed,
            "lost_connections": bench.lost,
            "errors": bench.errors[:10],
        }
    )
    return result


def verify(host: str, port: int, size: int, text: bool, timeout: float = 5.0) -> str | None:
    """Blocking single-message round trip; None when the echo is exact, else the reason."""
    payload = make_payload(size, text)
    request, accept = handshake_request(host, port)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return "connection closed during handshake"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            reason = check_handshake(head, accept)
            if reason:
                return reason
            sock.sendall(build_frame(payload, text))

            def need(k: int) -> bytes:
                nonlocal buf
                while len(buf) < k:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("connection closed")
                    buf += chunk
                out, buf = buf[:k], buf[k:]
                return out

            b0, b1 = need(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(need(2), "big")
            elif length == 127:
                length = int.from_bytes(need(8), "big")
            if b1 & 0x80:
                return "server frame is masked"
            data = need(length)
            if b0 != (0x81 if text else 0x82):
                return f"unexpected frame header 0x{b0:02x}"
            if data != payload:
                return "echoed payload differs"
            close = bytearray(build_frame(b"\x03\xe8", False))
            close[0] = 0x88
            sock.sendall(bytes(close))
    except OSError as exc:
        return f"{exc!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--binary", action="store_true", help="binary frames (default: text)")
    parser.add_argument("--inflight", type=int, default=4, help="messages in flight per connection")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)

    coro = run_load(
        args.host,
        args.port,
        connections=args.connections,
        size=args.size,
        text=not args.binary,
        inflight=args.inflight,
        duration=args.duration,
        path=args.path,
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
        result["loop"] = "asyncio"
    else:
        result = uvloop.run(coro)
        result["loop"] = "uvloop"
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
