"""Bare-uvloop "ceiling" server: the upper bound for a Python server on uvloop.

No ASGI, no HTTP parser: an ``asyncio.Protocol`` that counts requests by searching for
``b"\\r\\n\\r\\n"`` and answers each one with a canned "Hello, world!" response (with a Date
header refreshed once a second, like a real server).  Only meaningful for bodiless GET load
(the ``hello`` and ``pipelined`` tests).

It also answers a websocket upgrade on the first request of a connection and then echoes every
frame back, so the websocket load client can be shown to push more messages than a minimal
Python server on uvloop can answer (``ws64``/``ws16k`` rows are a client-capacity reference,
not an ASGI server).

    python benchmarks/ceiling.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import socket
import sys
from email.utils import formatdate

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024

_response = b""


def _build_response() -> bytes:
    date = formatdate(usegmt=True).encode()
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"server: ceiling\r\n"
        b"date: " + date + b"\r\n"
        b"content-type: text/plain\r\n"
        b"content-length: 13\r\n"
        b"\r\n"
        b"Hello, world!"
    )


def _refresh_date(loop: asyncio.AbstractEventLoop) -> None:
    global _response
    _response = _build_response()
    loop.call_later(1.0, _refresh_date, loop)


try:  # the C helper every websockets-based server uses; pure-Python fallback below
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )


class WebSocketEcho:
    """Minimal RFC 6455 frame echo (server side: unmask client frames, send unmasked)."""

    __slots__ = ("buf", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        i = 0
        out = []
        while n - i >= 2:
            b0 = buf[i]
            b1 = buf[i + 1]
            length = b1 & 0x7F
            pos = i + 2
            if length == 126:
                if n - pos < 2:
                    break
                length = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            elif length == 127:
                if n - pos < 8:
                    break
                length = int.from_bytes(buf[pos : pos + 8], "big")
                pos += 8
            masked = b1 & 0x80
            if masked:
                if n - pos < 4:
                    break
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            end = pos + length
            if end > n:
                break
            payload = bytes(buf[pos:end])
            if masked and length:
                payload = _apply_mask(payload, mask)
            i = end
            opcode = b0 & 0x0F
            if opcode == 8:  # close: answer and hang up
                out.append(b"\x88\x02\x03\xe8")
                self.transport.write(b"".join(out))
                self.transport.close()
                buf.clear()
                return
            if opcode == 9:  # ping -> pong
                b0 = 0x80 | 0xA
            elif opcode == 0xA:  # pong: ignore
                continue
            if length < 126:
                out.append(bytes((b0, length)))
            elif length < 65536:
                out.append(bytes((b0, 126)) + length.to_bytes(2, "big"))
            else:
                out.append(bytes((b0, 127)) + length.to_bytes(8, "big"))
            out.append(payload)
        if i:
            del buf[:i]
        if out:
            self.transport.write(b"".join(out))


class Ceiling(asyncio.Protocol):
    __slots__ = ("served", "tail", "transport", "ws")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.served = 0
        self.ws: WebSocketEcho | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if self.tail:
            data = self.tail + data
        count = data.count(b"\r\n\r\n")
        if not count:
            if len(data) > _MAX_HEAD:
                self.transport.close()  # type: ignore[union-attr]
            self.tail = data
            return
        end = data.rfind(b"\r\n\r\n") + 4
        self.tail = data[end:]
        if not self.served and self._maybe_upgrade(data[:end]):
            return
        self.served += count
        self.transport.write(_response * count if count > 1 else _response)  # type: ignore[union-attr]

    def _maybe_upgrade(self, head: bytes) -> bool:
        lower = head.lower()
        if b"upgrade: websocket" not in lower:
            return False
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # noqa: S324
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"upgrade: websocket\r\n"
            b"connection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept + b"\r\n\r\n"
        )
        self.ws = WebSocketEcho(self.transport)  # type: ignore[arg-type]
        if self.tail:
            tail, self.tail = self.tail, b""
            self.ws.feed(tail)
        return True


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    _refresh_date(loop)
    server = await loop.create_server(Ceiling, host, port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("ceiling.py needs uvloop", file=sys.stderr)
        return 2
    uvloop.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
