"""Building ASGI connection scopes from plain request facts (no wire protocol types here)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from asgiserve.asgi.types import ASGI_VERSION, Scope

__all__ = ["ConnectionInfo", "decode_path", "http_scope", "websocket_scope"]


class ConnectionInfo:
    """What a scope needs to know about the connection; built once per connection."""

    __slots__ = ("client", "extensions", "http_template", "root_path", "scheme", "server", "state")

    def __init__(
        self,
        *,
        scheme: str,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        root_path: str,
        state: dict[str, Any],
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.scheme = scheme
        self.client = client
        self.server = server
        self.root_path = root_path
        self.state = state
        self.extensions = extensions or {}
        #: The keys of an HTTP scope that are the same for every request on the connection,
        #: in the order http_scope() gives them: copying this and setting the rest costs less
        #: than building the whole dict per request.
        self.http_template: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": "1.1",
            "method": "GET",
            "scheme": scheme,
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": root_path,
            "headers": [],
            "client": client,
            "server": server,
            "state": {},
            "extensions": {},
        }


def decode_path(raw_path: bytes) -> str:
    """Percent-decode a request path into text (ASGI: percent escapes and UTF-8 decoded)."""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        # find(), not `in`: bytes.__contains__ raises and clears a TypeError for a bytes
        # operand (it tries an integer first), far dearer than the search itself.
        if raw_path.find(b"%") < 0:
            return raw_path.decode("utf-8", "replace")
        return unquote(raw_path.decode("latin-1"))
    # The usual path: ASCII, decoded once, then searched as text (a str search is cheap).
    return unquote(path) if "%" in path else path


def http_scope(
    info: ConnectionInfo,
    method: str,
    http_version: str,
    raw_path: bytes,
    query_string: bytes,
    headers: list[tuple[bytes, bytes]],
) -> Scope:
    root_path = info.root_path
    path = decode_path(raw_path)
    if root_path:
        # ASGI: "path" and "raw_path" include the root path the app is mounted at.
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    scope = info.http_template.copy()
    scope["http_version"] = http_version
    scope["method"] = method
    scope["path"] = path
    scope["raw_path"] = raw_path
    scope["query_string"] = query_string
    scope["headers"] = headers
    state = info.state
    scope["state"] = state.copy() if state else {}
    # A copy per request: an app (or HTTP/2) may add to its own.
    scope["extensions"] = info.extensions.copy()
    return scope


def websocket_scope(
    info: ConnectionInfo,
    raw_path: bytes,
    query_string: bytes,
    headers: list[tuple[bytes, bytes]],
) -> Scope:
    root_path = info.root_path
    path = decode_path(raw_path)
    if root_path:
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    subprotocols = [
        token.strip().decode("latin-1")
        for name, value in headers
        if name == b"sec-websocket-protocol"
        for token in value.split(b",")
        if token.strip()
    ]
    state = info.state
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    tls = info.extensions.get("tls")
    if tls is not None:
        extensions["tls"] = tls
    return {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": "1.1",
        "scheme": "wss" if info.scheme == "https" else "ws",
        "path": path,
        "raw_path": raw_path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": headers,
        "client": info.client,
        "server": info.server,
        "subprotocols": subprotocols,
        "state": state.copy() if state else {},
        "extensions": extensions,
    }
