"""A WebSocket on one HTTP/2 stream (RFC 8441).

Theory of operation
-------------------
When the server runs WebSockets, :class:`~asgiserve.transport.http2.HTTP2Connection`
advertises SETTINGS_ENABLE_CONNECT_PROTOCOL; a client then opens a WebSocket with an extended
CONNECT (``:protocol = websocket``) on a new stream. The WebSocket itself is the same
:class:`~asgiserve.transport.websocket.WebSocketConnection` as over HTTP/1.1, with the same
core, ASGI cycle, limits and timers: :class:`H2WebSocketStream` stands in for its transport
(the WebSocket frames travel in the stream's DATA frames, RFC 8441 section 5) and answers the
handshake with HEADERS (200 where HTTP/1.1 says 101).

Flow control is the stream's: what we send waits for the peer's window (the WebSocket's
``send`` then waits, as for a full socket buffer), and what we receive is acknowledged
(WINDOW_UPDATE) only while the app keeps up, so a client cannot queue more than one window
ahead of an app that stopped reading. Closing the WebSocket ends the stream (END_STREAM);
aborting it resets the stream (CANCEL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from asgiserve.transport.http2 import HOP_BY_HOP, lower_names

if TYPE_CHECKING:
    from asgiserve.transport.http2 import H2Stream, HTTP2Connection
    from asgiserve.transport.websocket import WebSocketConnection

__all__ = ["H2WebSocketStream"]


class H2WebSocketStream:
    """The byte stream and handshake responder of a WebSocket carried by an HTTP/2 stream."""

    __slots__ = ("closed", "connection", "lost", "protocol", "reading_paused", "stream")

    def __init__(self, connection: HTTP2Connection, stream: H2Stream) -> None:
        self.connection = connection
        self.stream = stream
        self.protocol: WebSocketConnection | None = None
        self.reading_paused = False
        #: We ended or reset the stream: nothing more is written.
        self.closed = False
        #: The WebSocket has been told the stream is gone (connection_lost), once.
        self.lost = False

    # -- ByteStream (what the WebSocket writes to) -----------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        stream = self.stream
        stream.send_body(data, True)
        protocol = self.protocol
        if stream.writing_paused and protocol is not None and not protocol.writing_paused:
            protocol.pause_writing()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.send_body(b"", False)  # END_STREAM once what is pending has gone
        self._finish()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.ended = True
        self.stream.pending = b""
        self.connection.reset(self.stream.stream_id, ErrorCodes.CANCEL)
        self._finish()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        self.stream.resume_body()  # acknowledge what was held back

    # -- HandshakeResponder ----------------------------------------------------------------------

    def accept_response(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.connection.send_headers(
            self.stream.stream_id,
            [(b":status", b"200"), *self.connection.default_headers(), *lower_names(headers)],
            end_stream=False,
        )

    def http_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        kept = [(n, v) for n, v in lower_names(headers) if n not in _NOT_IN_RESPONSE]
        self.connection.send_headers(
            self.stream.stream_id,
            [
                (b":status", b"%d" % status),
                *self.connection.default_headers(),
                *kept,
                (b"content-length", b"%d" % len(body)),
            ],
            end_stream=not body,
        )
        if body:
            self.stream.send_body(body, False)
        else:
            self.stream.ended = True
        self.closed = True
        self._finish()

    # -- from the HTTP/2 connection --------------------------------------------------------------

    def data_received(self, data: bytes, flow_controlled_length: int) -> None:
        if self.reading_paused:
            self.stream.unacked += flow_controlled_length
        else:
            self.connection.acknowledge(self.stream.stream_id, flow_controlled_length)
        if self.protocol is not None and not self.closed:
            self.protocol.data_received(data)

    def eof_received(self) -> None:
        if self.protocol is not None:
            self.protocol.eof_received()

    def drained(self) -> None:
        """The stream's pending bytes have gone (or the socket drained)."""
        protocol = self.protocol
        if protocol is not None and protocol.writing_paused and not self.stream.writing_paused:
            protocol.resume_writing()
        if self.closed and not self.stream.pending:
            self.connection.forget(self.stream)

    def connection_lost(self) -> None:
        """The stream was reset by the peer, or the connection is gone."""
        self.closed = True
        if not self.lost:
            self.lost = True
            if self.protocol is not None:
                self.protocol.connection_lost(None)

    def _finish(self) -> None:
        # As an asyncio transport does after close(): connection_lost, at the loop's next turn.
        self.connection.loop.call_soon(self.connection_lost)
        if not self.stream.pending:
            self.connection.forget(self.stream)


_NOT_IN_RESPONSE = HOP_BY_HOP | {b"content-length"}  # we frame the body ourselves
