"""atheris target: the WebSocket frame decoder (asgiserve.protocols.websocket).

Each input chooses permessage-deflate on or off, a maximum message size and how the stream is
cut into reads (the layout of ``http11_parser.split_input``), then feeds the rest to a ``WebSocketCore`` after an accepted handshake. A
finding is any exception escaping ``receive_data``/``receive_eof``/``data_to_send``. With
``FUZZ_WS_SPLITS=1`` the events of the whole stream and of the cut stream must also be equal
(messages, and the close code of a failed connection). See README.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["asgiserve"]):
    from asgiserve.protocols.websocket import Message, WebSocketClosed, WebSocketCore

from http11_parser import split_input

COMPARE_SPLITS = os.environ.get("FUZZ_WS_SPLITS") == "1"
HANDSHAKE = [
    (b"host", b"a"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]
DEFLATE = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")


def events(deflate: bool, max_size: int, reads: list[bytes]) -> list[object]:
    core = WebSocketCore(max_size=max_size, per_message_deflate=deflate)
    assert core.handshake("/", [*HANDSHAKE, DEFLATE] if deflate else HANDSHAKE).accepted
    seen: list[object] = []
    for data in reads:
        for event in core.receive_data(data):
            if isinstance(event, Message):
                seen.append(("message", event.text, event.data))
            elif isinstance(event, WebSocketClosed):
                seen.append(("closed", event.code))
        core.data_to_send()
    seen.extend(
        ("closed", event.code) for event in core.receive_eof() if isinstance(event, WebSocketClosed)
    )
    core.data_to_send()
    return seen


def one_input(raw: bytes) -> None:
    # Layout as in http11_parser.split_input; bit 0 of the flag byte turns permessage-deflate
    # on, bits 4-7 choose the maximum message size.
    data, reads, deflate = split_input(raw)
    max_size = 1 << (4 + ((raw[0] >> 4) if raw else 0))
    whole = events(deflate, max_size, [data])
    split = events(deflate, max_size, reads)
    if COMPARE_SPLITS and whole != split:
        raise AssertionError(f"whole {whole!r} != split {split!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
