"""The sans-I/O WebSocket core fed directly: its short cut for plain data frames must give
exactly the messages, replies and close codes that the ``websockets`` parser gives."""

from __future__ import annotations

import os
import struct

import pytest

from asgiserve.protocols.websocket import Message, WebSocketClosed, WebSocketCore
from tests.test_websocket import frame as client_frame

HANDSHAKE = [
    (b"host", b"a"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def open_core(*, max_size: int = 1 << 20, deflate: str | None = None) -> WebSocketCore:
    core = WebSocketCore(max_size=max_size, per_message_deflate=True)
    headers = list(HANDSHAKE)
    if deflate:
        headers.append((b"sec-websocket-extensions", deflate.encode()))
    assert core.handshake("/", headers).accepted
    return core


def feed(core: WebSocketCore, data: bytes, chunk: int) -> list[Message | WebSocketClosed]:
    events: list[Message | WebSocketClosed] = []
    for i in range(0, len(data), chunk):
        events.extend(core.receive_data(data[i : i + chunk]))
    return events


def summary(events: list[Message | WebSocketClosed]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for event in events:
        if isinstance(event, Message):
            out.append(("text", event.text) if event.text is not None else ("bytes", event.data))
        else:
            out.append(("closed", (event.code, event.reason)))
    return out


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while data:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        assert not data[1] & 0x80, "server frames are never masked"
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


BIG = os.urandom(300 * 1024)  # past the short cut's limit: websockets parses it
MIXED = [
    client_frame(0x1, b"hello"),
    client_frame(0x2, bytes(range(200))),  # 16-bit length
    client_frame(0x1, "é".encode() * 35_000),  # 64-bit length
    client_frame(0x9, b"ping!"),
    client_frame(0x2, BIG),
    client_frame(0x1, b"frag", fin=False),
    client_frame(0x9, b"mid"),
    client_frame(0x0, b"mented", fin=True),
    client_frame(0x2, b""),
    client_frame(0x1, b"last"),
]
EXPECTED = [
    ("text", "hello"),
    ("bytes", bytes(range(200))),
    ("text", "é" * 35_000),
    ("bytes", BIG),
    ("text", "fragmented"),
    ("bytes", b""),
    ("text", "last"),
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 125, 4096, 1 << 30])
def test_any_split_of_the_stream_gives_the_same_messages(chunk: int) -> None:
    core = open_core()
    data = b"".join(MIXED)
    if chunk == 1:
        data = data[: -len(MIXED[4]) - sum(map(len, MIXED[5:]))]  # byte by byte: skip BIG
        expected = EXPECTED[:3]
    else:
        expected = EXPECTED
    assert summary(feed(core, data, chunk)) == expected
    pongs = [p for opcode, p in server_frames(core.data_to_send()[0]) if opcode == 0xA]
    assert pongs == ([b"ping!"] if chunk == 1 else [b"ping!", b"mid"])


@pytest.mark.parametrize("key", [b"\x00\x00\x00\x00", b"\x88\x26\x06\x75", b"\xff\x80\x7e\x01"])
def test_frames_after_a_fragmented_message_are_read_from_their_boundary(key: bytes) -> None:
    # Regression: the frame ending a fragmented message used to be handed to websockets
    # together with whatever followed it in the same read, so the short cut resumed in the
    # middle of the next frame and lost or garbled the messages after it.
    stream = b"".join(
        [
            client_frame(0x1, b"frag", fin=False, key=key),
            client_frame(0x9, b"mid", key=key),
            client_frame(0x0, b"mented", key=key),
            client_frame(0x2, b"", key=key),
            client_frame(0x2, b"x" * 300, key=key),
            client_frame(0x1, b"last", key=key),
        ]
    )
    expected = [("text", "fragmented"), ("bytes", b""), ("bytes", b"x" * 300), ("text", "last")]
    for chunk in range(1, 40):
        assert summary(feed(open_core(), stream, chunk)) == expected, chunk


def test_short_cut_and_websockets_agree_on_a_compressed_connection() -> None:
    # With permessage-deflate negotiated every frame goes through websockets.
    core = open_core(deflate="permessage-deflate")
    data = b"".join([client_frame(0x1, b"plain"), client_frame(0x2, b"\x00\x01")])
    assert summary(feed(core, data, 3)) == [("text", "plain"), ("bytes", b"\x00\x01")]
    core.send_text("x" * 1000)
    ((opcode, payload),) = server_frames(core.data_to_send()[0])
    assert opcode == 0x1 and len(payload) < 100  # compressed by websockets


@pytest.mark.parametrize(
    "data,code",
    [
        (client_frame(0x1, b"\xff"), 1007),
        (client_frame(0x1, b"ok") + client_frame(0x1, b"bad \xc3"), 1007),
        (client_frame(0x1, b"unmasked", mask=False), 1002),
        (client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"), 1002),
        (client_frame(0x2, b"x" * 2000), 1009),
        (client_frame(0x3, b"reserved"), 1002),
    ],
    ids=[
        "bad-utf8",
        "bad-utf8-after-good",
        "unmasked",
        "new-message-in-fragment",
        "too-big",
        "op3",
    ],
)
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_errors_keep_their_close_codes(data: bytes, code: int, chunk: int) -> None:
    core = open_core(max_size=1000)
    events = feed(core, data, chunk)
    closed = [e for e in events if isinstance(e, WebSocketClosed)]
    assert [c.code for c in closed] == [code]
    sent = server_frames(core.data_to_send()[0])
    assert sent[-1][0] == 0x8 and struct.unpack("!H", sent[-1][1][:2])[0] == code


def test_frames_after_a_close_are_not_messages() -> None:
    core = open_core()
    data = client_frame(0x8, struct.pack("!H", 1000)) + client_frame(0x1, b"too late")
    events = feed(core, data, 1 << 20)
    assert summary(events) == [("closed", (1000, ""))]
    assert not core.open
    out, eof = core.data_to_send()
    assert [f[0] for f in server_frames(out)] == [0x8] and eof


def test_sent_messages_are_framed_in_order_after_queued_pongs() -> None:
    core = open_core()
    core.receive_data(client_frame(0x9, b"p1"))
    core.send_text("a")
    core.send_bytes(b"\x00" * 70_000)
    core.send_text("é" * 100)
    frames = server_frames(core.data_to_send()[0])
    assert frames == [
        (0xA, b"p1"),
        (0x1, b"a"),
        (0x2, b"\x00" * 70_000),
        (0x1, "é".encode() * 100),
    ]


def test_close_between_fragments_echoes_the_peer_code_and_drops_the_message() -> None:
    # Autobahn 7.1.5; RFC 6455 section 5.4 lets a close come between fragments.
    data = (
        client_frame(0x1, b"fragment1", fin=False)
        + client_frame(0x8, struct.pack("!H", 1000))
        + client_frame(0x0, b"fragment2")
    )
    for chunk in (1, 5, 1 << 20):
        core = open_core()
        assert summary(feed(core, data, chunk)) == [("closed", (1000, ""))], chunk
        out, eof = core.data_to_send()
        assert server_frames(out) == [(0x8, struct.pack("!H", 1000))] and eof


def test_close_between_compressed_fragments_echoes_the_peer_code() -> None:
    core = open_core(deflate="permessage-deflate")
    data = client_frame(0x1, b"plain", fin=False) + client_frame(0x8, struct.pack("!H", 1001))
    assert summary(feed(core, data, 3)) == [("closed", (1001, ""))]
    out, eof = core.data_to_send()
    assert server_frames(out) == [(0x8, struct.pack("!H", 1001))] and eof


@pytest.mark.parametrize("key", [b"\x00\x00\x00\x00", b"\x37\xa1\x02\xfe"])
def test_invalid_utf8_fails_when_it_arrives_not_when_the_frame_ends(key: bytes) -> None:
    # Autobahn 6.4.3: one text frame in three reads, the second holding the invalid bytes.
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited" * 100
    data = client_frame(0x1, payload, key=key)
    core = open_core()
    split = len(data) - len(payload) + 11  # the frame head, then the valid part
    assert core.receive_data(data[:split]) == []
    events = core.receive_data(data[split : split + 2])  # "\xf4\x90": no UTF-8 starts so
    assert summary(events) == [("closed", (1007, "invalid UTF-8 in text message"))]
    out, eof = core.data_to_send()
    assert server_frames(out)[-1][1][:2] == struct.pack("!H", 1007) and eof


def test_invalid_utf8_in_a_fragment_fails_before_the_message_ends() -> None:
    data = client_frame(0x1, b"ok", fin=False) + client_frame(0x0, b"\xc0\xaf more", fin=False)
    events = open_core().receive_data(data)
    assert summary(events)[-1] == ("closed", (1007, "invalid UTF-8 in text message"))


@pytest.mark.parametrize("deflate", [None, "permessage-deflate"])
@pytest.mark.parametrize("chunk", [1, 2, 5, 9, 1 << 20])
def test_first_error_decides_the_close_code_whatever_the_reads(
    deflate: str | None, chunk: int
) -> None:
    # Invalid UTF-8 in a fragment, then a frame with a reserved opcode: the first error (1007)
    # wins, whether the two frames arrive in one read or byte by byte.
    data = client_frame(0x1, b"ab\xff", fin=False) + client_frame(0x3, b"x")
    events = feed(open_core(deflate=deflate), data, chunk)
    assert [e.code for e in events if isinstance(e, WebSocketClosed)] == [1007]
