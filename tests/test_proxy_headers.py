"""Proxy headers: X-Forwarded-* and RFC 7239 Forwarded, believed only from trusted peers."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from asgiserve.config import Config, ConfigError
from asgiserve.middleware.proxy_headers import (
    ProxyHeadersMiddleware,
    TrustedPeers,
    apply_forwarding,
    parse_forwarded,
)

PEER = ("127.0.0.1", 50000)


def scope_with(
    *headers: tuple[str, str],
    client: tuple[str, int] | None = PEER,
    kind: str = "http",
    scheme: str = "http",
) -> dict[str, Any]:
    return {
        "type": kind,
        "scheme": scheme,
        "client": client,
        "server": ("127.0.0.1", 8000),
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
    }


def forwarded(
    *headers: tuple[str, str], trusted: str = "127.0.0.1", **kwargs: Any
) -> dict[str, Any]:
    """The scope after the middleware, as the app would see it."""
    scope = scope_with(*headers, **kwargs)
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = ProxyHeadersMiddleware(app, TrustedPeers(trusted.split(",")))
    coroutine = middleware(scope, None, None)  # type: ignore[arg-type]
    try:
        coroutine.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        pass
    return seen[0]


# -- trust -------------------------------------------------------------------------------------


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    scope = forwarded(
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        client=("198.51.100.2", 4000),
    )
    assert scope["client"] == ("198.51.100.2", 4000)
    assert scope["scheme"] == "http"


def test_trusted_peer_sets_client_from_x_forwarded_for() -> None:
    assert forwarded(("X-Forwarded-For", "203.0.113.7"))["client"] == ("203.0.113.7", 0)


def test_cidr_networks_and_ipv4_mapped_peers_are_trusted() -> None:
    peers = TrustedPeers(["10.0.0.0/8", "2001:db8::/32"])
    assert peers.trusts("10.1.2.3")
    assert peers.trusts("::ffff:10.1.2.3")  # a dual-stack socket's view of an IPv4 peer
    assert peers.trusts("2001:db8::1")
    assert not peers.trusts("11.0.0.1")
    assert not peers.trusts("not-an-address")


def test_star_trusts_everyone_and_unix_trusts_unix_socket_peers() -> None:
    assert TrustedPeers(["*"]).trusts_peer(("198.51.100.2", 1))
    assert TrustedPeers(["*"]).trusts_peer(None)
    assert TrustedPeers(["unix:"]).trusts_peer(None)
    assert not TrustedPeers(["127.0.0.1"]).trusts_peer(None)
    scope = forwarded(("X-Forwarded-For", "203.0.113.7"), client=None, trusted="unix:")
    assert scope["client"] == ("203.0.113.7", 0)


def test_ipv6_addresses_are_matched_in_canonical_form() -> None:
    assert TrustedPeers(["0:0:0:0:0:0:0:1"]).trusts("::1")


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3"])
def test_invalid_trusted_entries_are_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="--forwarded-allow-ips"):
        Config.from_options("x:y", forwarded_allow_ips=entry)


def test_forwarded_allow_ips_is_split_on_commas() -> None:
    config = Config.from_options("x:y", forwarded_allow_ips="10.0.0.0/8, 127.0.0.1,")
    assert config.forwarded_allow_ips == ("10.0.0.0/8", "127.0.0.1")


# -- the X-Forwarded-For chain -------------------------------------------------------------------


def test_right_most_untrusted_address_of_the_chain_is_the_client() -> None:
    # The client claims to be 1.1.1.1; our edge proxy (10.0.0.5) appended what it saw.
    scope = forwarded(
        ("X-Forwarded-For", "1.1.1.1, 203.0.113.7, 10.0.0.5"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert scope["client"] == ("203.0.113.7", 0)


def test_all_trusted_chain_gives_the_left_most_address() -> None:
    scope = forwarded(("X-Forwarded-For", "10.0.0.9, 10.0.0.5"), trusted="127.0.0.1,10.0.0.0/8")
    assert scope["client"] == ("10.0.0.9", 0)


def test_repeated_x_forwarded_for_headers_form_one_chain() -> None:
    # RFC 9110 section 5.3: the same as one field with the values joined by commas.
    scope = forwarded(
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "10.0.0.5"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert scope["client"] == ("203.0.113.7", 0)


def test_addresses_with_ports_and_ipv6_are_understood() -> None:
    assert forwarded(("X-Forwarded-For", "203.0.113.7:4711"))["client"] == ("203.0.113.7", 4711)
    assert forwarded(("X-Forwarded-For", "2001:db8::7"))["client"] == ("2001:db8::7", 0)
    assert forwarded(("X-Forwarded-For", "[2001:db8::7]:443"))["client"] == ("2001:db8::7", 443)


def test_a_chain_entry_that_is_no_address_leaves_no_client() -> None:
    # Better no client than the proxy's address passed off as the client's.
    assert forwarded(("X-Forwarded-For", "unknown"))["client"] is None
    assert forwarded(("X-Forwarded-For", "<script>"))["client"] is None


# -- scheme and server ---------------------------------------------------------------------------


def test_x_forwarded_proto_sets_the_scheme() -> None:
    assert forwarded(("X-Forwarded-Proto", "https"))["scheme"] == "https"
    assert forwarded(("X-Forwarded-Proto", "HTTPS"))["scheme"] == "https"
    assert forwarded(("X-Forwarded-Proto", "gopher"))["scheme"] == "http"


def test_websocket_scopes_get_ws_and_wss() -> None:
    assert forwarded(("X-Forwarded-Proto", "https"), kind="websocket")["scheme"] == "wss"
    assert forwarded(("X-Forwarded-Proto", "wss"), kind="websocket")["scheme"] == "wss"
    scope = forwarded(("X-Forwarded-Proto", "http"), kind="websocket", scheme="wss")
    assert scope["scheme"] == "ws"


def test_proto_list_parallel_to_the_chain_is_read_by_position() -> None:
    scope = forwarded(
        ("X-Forwarded-For", "203.0.113.7, 10.0.0.5"),
        ("X-Forwarded-Proto", "https, http"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_proto_list_not_parallel_to_the_chain_uses_its_right_most_value() -> None:
    scope = forwarded(
        ("X-Forwarded-For", "203.0.113.7, 10.0.0.5, 10.0.0.6"),
        ("X-Forwarded-Proto", "http, https"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert scope["scheme"] == "https"


def test_x_forwarded_host_and_port_set_the_server() -> None:
    scope = forwarded(
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "example.com"),
        ("X-Forwarded-Port", "8443"),
    )
    assert scope["server"] == ("example.com", 8443)


def test_forwarded_host_port_defaults_to_the_host_then_the_scheme() -> None:
    host_port = forwarded(("X-Forwarded-Host", "example.com:8080"))
    assert host_port["server"] == ("example.com", 8080)
    https = forwarded(("X-Forwarded-Host", "example.com"), ("X-Forwarded-Proto", "https"))
    assert https["server"] == ("example.com", 443)
    assert forwarded(("X-Forwarded-Host", "[::1]:9000"))["server"] == ("[::1]", 9000)
    assert forwarded(("X-Forwarded-Port", "8443"))["server"] == ("127.0.0.1", 8443)


def host_header(scope: dict[str, Any]) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"host"]


@pytest.mark.parametrize(
    "headers,expected",
    [
        ([("X-Forwarded-Host", "example.com")], b"example.com"),
        ([("X-Forwarded-Host", "example.com"), ("X-Forwarded-Proto", "https")], b"example.com"),
        ([("X-Forwarded-Host", "example.com:8080")], b"example.com:8080"),
        ([("X-Forwarded-Host", "example.com"), ("X-Forwarded-Port", "8443")], b"example.com:8443"),
        ([("X-Forwarded-Host", "[::1]:9000")], b"[::1]:9000"),
        ([("Forwarded", "for=192.0.2.60;proto=https;host=example.com")], b"example.com"),
    ],
)
def test_forwarded_host_rewrites_the_host_header(
    headers: list[tuple[str, str]], expected: bytes
) -> None:
    scope = forwarded(("Host", "127.0.0.1:8000"), *headers)
    assert host_header(scope) == [expected]


def test_host_header_is_kept_without_a_forwarded_host_or_from_an_untrusted_peer() -> None:
    assert host_header(forwarded(("Host", "a.test"), ("X-Forwarded-Proto", "https"))) == [b"a.test"]
    untrusted = forwarded(
        ("Host", "a.test"), ("X-Forwarded-Host", "evil.test"), client=("198.51.100.2", 4000)
    )
    assert host_header(untrusted) == [b"a.test"]


def test_starlette_request_url_uses_the_forwarded_host(serve: Any) -> None:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse(str(Request(scope, receive).url))(scope, receive, send)

    server = serve(app)  # we are 127.0.0.1: trusted by default
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"}
    response = httpx.get(f"{server.url}/cart?id=3", headers=headers)
    assert response.text == "https://shop.example/cart?id=3"
    forwarded = httpx.get(f"{server.url}/a", headers={"Forwarded": "proto=http;host=b.example:81"})
    assert forwarded.text == "http://b.example:81/a"


@pytest.mark.parametrize("host", ["exa mple.com", "example.com:99999", "example.com:x", ""])
def test_invalid_forwarded_hosts_are_ignored(host: str) -> None:
    assert forwarded(("X-Forwarded-Host", host))["server"] == ("127.0.0.1", 8000)


# -- RFC 7239 Forwarded --------------------------------------------------------------------------


def test_forwarded_header_sets_client_scheme_and_server() -> None:
    scope = forwarded(("Forwarded", "for=192.0.2.60;proto=https;host=example.com;by=10.0.0.1"))
    assert scope["client"] == ("192.0.2.60", 0)
    assert scope["scheme"] == "https"
    assert scope["server"] == ("example.com", 443)


def test_forwarded_quoted_ipv6_with_port() -> None:
    # RFC 7239 section 6: IPv6 addresses are bracketed, and then must be quoted.
    scope = forwarded(("Forwarded", 'For="[2001:db8:cafe::17]:4711"'))
    assert scope["client"] == ("2001:db8:cafe::17", 4711)


def test_forwarded_chain_takes_the_right_most_untrusted_hop() -> None:
    scope = forwarded(
        ("Forwarded", "for=1.1.1.1;proto=http, for=203.0.113.7;proto=https"),
        ("Forwarded", "for=10.0.0.5;proto=http"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_forwarded_unknown_and_obfuscated_nodes_leave_no_client() -> None:
    # RFC 7239 section 6.2 and 6.3.
    assert forwarded(("Forwarded", "for=unknown"))["client"] is None
    assert forwarded(("Forwarded", "for=_hidden;proto=https"))["client"] is None


def test_x_forwarded_headers_win_over_forwarded() -> None:
    scope = forwarded(("Forwarded", "for=198.51.100.1"), ("X-Forwarded-For", "203.0.113.7"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_parse_forwarded_elements_pairs_and_quoting() -> None:
    assert parse_forwarded('for=a;proto=https, FOR="b,c;d";by=e') == [
        {"for": "a", "proto": "https"},
        {"for": "b,c;d", "by": "e"},
    ]
    assert parse_forwarded('for="\\"quoted\\""') == [{"for": '"quoted"'}]
    assert parse_forwarded("for=a, , for=b") == [{"for": "a"}, {"for": "b"}]


def test_parse_forwarded_marks_malformed_elements() -> None:
    # A repeated parameter (section 4) or a pair without "=" makes the element unusable.
    assert parse_forwarded("for=a;for=b, for=c") == [None, {"for": "c"}]
    assert parse_forwarded("junk, for=c") == [None, {"for": "c"}]
    # An unterminated quote may have swallowed the rest: nothing is usable.
    assert parse_forwarded('for="a, for=c') == []


def test_malformed_forwarded_element_stops_the_walk() -> None:
    scope = forwarded(
        ("Forwarded", "for=1.1.1.1, junk, for=10.0.0.5"), trusted="127.0.0.1,10.0.0.0/8"
    )
    assert scope["client"] is None


# -- cost and pass-through -----------------------------------------------------------------------


def test_middleware_returns_the_apps_own_awaitable() -> None:
    # No coroutine frame of its own on the hot path.
    marker = object()
    middleware = ProxyHeadersMiddleware(lambda s, r, w: marker, TrustedPeers(["127.0.0.1"]))  # type: ignore[arg-type,return-value]
    assert middleware(scope_with(), None, None) is marker  # type: ignore[arg-type]


def test_lifespan_scopes_pass_through() -> None:
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    seen: list[Any] = []
    middleware = ProxyHeadersMiddleware(
        lambda s, r, w: seen.append(s),
        TrustedPeers(["*"]),  # type: ignore[arg-type,func-returns-value,return-value]
    )
    middleware(scope, None, None)  # type: ignore[arg-type]
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]


def test_apply_forwarding_without_headers_changes_nothing() -> None:
    scope = scope_with(("Host", "example.com"))
    before = dict(scope)
    apply_forwarding(scope, TrustedPeers(["*"]))
    assert scope == before


# -- through the server --------------------------------------------------------------------------


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps(
        {"client": scope["client"], "scheme": scope["scheme"], "server": scope["server"]}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


SPOOF = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.mark.usefixtures("backend")
def test_server_applies_headers_from_a_trusted_peer_by_default(serve: Any) -> None:
    server = serve(whoami)  # --forwarded-allow-ips defaults to 127.0.0.1: us
    report = httpx.get(f"{server.url}/", headers=SPOOF).json()
    assert report["client"] == ["203.0.113.7", 0]
    assert report["scheme"] == "https"


def test_server_ignores_headers_from_an_untrusted_peer(serve: Any) -> None:
    server = serve(whoami, forwarded_allow_ips="10.0.0.1")
    report = httpx.get(f"{server.url}/", headers=SPOOF).json()
    assert report["client"][0] == "127.0.0.1"
    assert report["scheme"] == "http"


def test_no_proxy_headers_turns_it_off(serve: Any) -> None:
    server = serve(whoami, proxy_headers=False, forwarded_allow_ips="*")
    report = httpx.get(f"{server.url}/", headers=SPOOF).json()
    assert report["client"][0] == "127.0.0.1"


def test_unix_socket_peers_are_trusted_with_unix(serve: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    serve(whoami, uds=path, forwarded_allow_ips="unix:")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n"
            b"Connection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert json.loads(data.partition(b"\r\n\r\n")[2])["client"] == ["203.0.113.7", 0]


def test_loopback_peers_are_trusted_by_default_as_with_uvicorn() -> None:
    trusted = TrustedPeers(Config.from_options("x:y").forwarded_allow_ips)
    assert trusted.trusts("127.0.0.1") and trusted.trusts("::1")
    assert not trusted.trusts("10.0.0.1")
