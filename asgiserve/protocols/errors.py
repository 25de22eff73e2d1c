"""Errors raised by the protocol cores.

A :class:`ProtocolError` is always the *peer's* fault. It carries the status code the response
should have (400, 408, 413, 414, 431, 501, 505) so that exactly one place — the connection — turns
it into a complete error response followed by a close.
"""

from __future__ import annotations

from http import HTTPStatus


class ProtocolError(Exception):
    """The peer sent something that violates the protocol or one of our limits."""

    def __init__(self, reason: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = int(status)

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, status={self.status})"
