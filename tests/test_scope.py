"""Scope building (asgi/scope.py), in memory: the path as ASGI wants it."""

from __future__ import annotations

import pytest

from asgiserve.asgi.scope import ConnectionInfo, decode_path, http_scope


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        (b"/", "/"),
        (b"/items/42", "/items/42"),
        # Percent escapes are decoded, as UTF-8; a bad sequence becomes U+FFFD.
        (b"/caf%C3%A9%20x", "/caf\u00e9 x"),
        (b"/a%2Fb", "/a/b"),
        (b"/bad%FF", "/bad\ufffd"),
        (b"/100%", "/100%"),  # not an escape: kept
        # Raw non-ASCII bytes (HTTP/2 lets a :path carry them): UTF-8, errors replaced.
        ("/caf\u00e9".encode(), "/caf\u00e9"),
        (b"/\xff", "/\ufffd"),
        # Both: the raw bytes are taken one for one, the escapes decoded as UTF-8.
        (b"/\xe9%C3%A9", "/\u00e9\u00e9"),
    ],
)
def test_decode_path(raw_path: bytes, path: str) -> None:
    assert decode_path(raw_path) == path


def test_http_scope_keeps_raw_path_and_prefixes_the_root_path() -> None:
    info = ConnectionInfo(
        scheme="http", client=("127.0.0.1", 5000), server=None, root_path="/api", state={}
    )
    scope = http_scope(info, "GET", "1.1", b"/caf%C3%A9", b"q=1", [(b"host", b"a")])
    assert scope["path"] == "/api/caf\u00e9"
    assert scope["raw_path"] == b"/api/caf%C3%A9"
    assert scope["query_string"] == b"q=1"
    assert scope["root_path"] == "/api"
