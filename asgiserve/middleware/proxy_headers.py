"""Believe a trusted proxy about the client: ``X-Forwarded-*`` and ``Forwarded`` (RFC 7239).

Theory of operation
-------------------
A reverse proxy connects to us on the client's behalf, so the connection's peer is the proxy.
A proxy says who the client was in request headers; but anyone can send those headers, so
they are only believed when the *direct peer* is trusted (``--forwarded-allow-ips``).

Proxies append to a chain (``X-Forwarded-For: client, proxy1, proxy2``): every proxy adds the
address it saw to the right. Only the right end is trustworthy, written by our trusted peer;
anything further left may have been sent by the client. So we walk the chain from the right,
skipping addresses we trust (our own proxies), and take the first one we do not trust: that is
the client as far as our proxies can vouch. If every address is trusted, the left-most is it.

From the chosen hop we apply:

* ``client``: the hop's address (port 0 when the header gives none, as ``X-Forwarded-For``
  never does);
* ``scheme``: ``X-Forwarded-Proto`` / ``proto=`` (``https`` -> ``https``/``wss`` by scope type);
* ``server``: ``X-Forwarded-Host`` / ``host=`` with ``X-Forwarded-Port`` (or the host's own
  port, or the scheme's default port); the ``host`` header then says the same (with the port
  unless it is the scheme's default), since frameworks build URLs from it.

The ``X-Forwarded-*`` family wins when a request carries any of it, else ``Forwarded`` is
used: nginx, HAProxy's ``option forwardfor``, AWS/GCP load balancers and Traefik speak the
former, and a proxy that writes ``X-Forwarded-For`` usually passes a client's own
``Forwarded`` header through untouched (the reverse is rarer). For ``X-Forwarded-Proto``,
``-Host`` and ``-Port``, which proxies often overwrite rather than append to, a list as long as
the ``X-Forwarded-For`` chain is read position by position; otherwise its right-most value
(set by the proxy nearest to us) is used.

Cost: the middleware runs for every request. When the peer is not trusted, or the request has
no forwarding header, it is one set lookup and one pass over the header names, and allocates
nothing. Its ``__call__`` is a plain function returning the app's coroutine, so it adds no
coroutine frame either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["ProxyHeadersMiddleware", "TrustedPeers", "apply_forwarding", "parse_forwarded"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_X_FORWARDED_FOR = b"x-forwarded-for"
_X_FORWARDED_PROTO = b"x-forwarded-proto"
_X_FORWARDED_HOST = b"x-forwarded-host"
_X_FORWARDED_PORT = b"x-forwarded-port"
_FORWARDED = b"forwarded"
_FORWARDING_HEADERS = frozenset(
    (_X_FORWARDED_FOR, _X_FORWARDED_PROTO, _X_FORWARDED_HOST, _X_FORWARDED_PORT, _FORWARDED)
)
_SCHEMES = {
    # forwarded proto -> (http scope scheme, websocket scope scheme)
    "http": ("http", "ws"),
    "ws": ("http", "ws"),
    "https": ("https", "wss"),
    "wss": ("https", "wss"),
}
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_CACHE_SIZE = 1024


class TrustedPeers:
    """``--forwarded-allow-ips``: addresses, CIDR networks, ``*`` and ``unix:``."""

    __slots__ = ("_cache", "any", "hosts", "networks", "unix")

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        #: Connections over unix sockets (whose scope ``client`` is None).
        self.unix = False
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if entry == "*":
                self.any = True
            elif entry == "unix:":
                self.unix = True
            elif "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is not a CIDR network") from None
            else:
                try:
                    address = ipaddress.ip_address(entry)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address, a CIDR network, '*' or 'unix:'"
                    ) from None
                hosts.add(entry)
                hosts.add(str(address))  # the canonical spelling, as peers are reported
        self.hosts = frozenset(hosts)
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        """Is this address (as text) one of ours?"""
        if self.any or host in self.hosts:
            return True
        if not self.networks:
            return False
        cache = self._cache
        verdict = cache.get(host)
        if verdict is None:
            verdict = _in_networks(host, self.networks)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # bounded: addresses come from clients
            cache[host] = verdict
        return verdict

    def trusts_peer(self, client: object) -> bool:
        """Is the connection's direct peer (the scope's ``client``) trusted?"""
        if client is None:
            return self.unix or self.any
        return self.trusts(client[0])  # type: ignore[index]


def _in_networks(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped
        return any(mapped in network for network in networks)
    return any(address in network for network in networks)


class ProxyHeadersMiddleware:
    """Apply forwarding headers from trusted peers to ``client``, ``scheme`` and ``server``."""

    __slots__ = ("app", "hosts", "more", "trusted", "unix")

    def __init__(self, app: ASGIApp, trusted: TrustedPeers) -> None:
        self.app = app
        self.trusted = trusted
        # TrustedPeers.trusts_peer(), taken apart so that the common case (a peer in the
        # list of addresses) costs one set lookup and no call.
        self.hosts = trusted.hosts
        self.more = trusted.any or bool(trusted.networks)
        self.unix = trusted.unix or trusted.any

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async def``: returning the app's own coroutine costs no extra frame.
        if scope["type"] != "lifespan":
            self.rewrite(scope)
        return self.app(scope, receive, send)

    def rewrite(self, scope: Scope) -> None:
        """Apply the forwarding headers of an HTTP or WebSocket ``scope`` if its peer is
        trusted (also used by the server for requests it answers without the app)."""
        client = scope.get("client")
        if (
            self.unix
            if client is None
            else client[0] in self.hosts or (self.more and self.trusted.trusts(client[0]))
        ):
            for name, _ in scope["headers"]:
                if name in _FORWARDING_HEADERS:
                    apply_forwarding(scope, self.trusted)
                    break


# -- applying the headers ------------------------------------------------------------------------


def apply_forwarding(scope: Scope, trusted: TrustedPeers) -> None:
    """Rewrite ``scope`` from its forwarding headers; the peer is already known to be trusted."""
    chain: list[str] = []
    protos: list[str] = []
    hosts: list[str] = []
    ports: list[str] = []
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name in _FORWARDING_HEADERS:
            text = value.decode("latin-1")
            if name == _FORWARDED:
                forwarded.append(text)
            else:
                # RFC 9110 section 5.3: repeated fields are one comma-separated list.
                items = [item.strip() for item in text.split(",")]
                if name == _X_FORWARDED_FOR:
                    chain.extend(items)
                elif name == _X_FORWARDED_PROTO:
                    protos.extend(items)
                elif name == _X_FORWARDED_HOST:
                    hosts.extend(items)
                else:
                    ports.extend(items)
    if chain or protos or hosts or ports:
        _apply_x_forwarded(scope, trusted, chain, protos, hosts, ports)
    elif forwarded:
        _apply_forwarded(scope, trusted, parse_forwarded(",".join(forwarded)))


def _choose(chain: list[str | None], trusted: TrustedPeers) -> int | None:
    """The index of the right-most untrusted address in ``chain`` (None entries are not
    addresses: ``unknown``, obfuscated or malformed), the left-most if all are trusted."""
    for index in range(len(chain) - 1, -1, -1):
        host = chain[index]
        if host is None or not trusted.trusts(host):
            return index
    return 0 if chain else None


def _pick(values: list[str], index: int | None, chain_length: int) -> str | None:
    """Position ``index`` when the list runs parallel to the address chain, else the
    right-most value (set by the proxy nearest to us)."""
    if not values:
        return None
    if index is not None and len(values) == chain_length:
        return values[index]
    return values[-1]


def _apply_x_forwarded(
    scope: Scope,
    trusted: TrustedPeers,
    chain: list[str],
    protos: list[str],
    hosts: list[str],
    ports: list[str],
) -> None:
    index: int | None = None
    if chain:
        addresses = [_parse_node(item) for item in chain]
        index = _choose([a[0] if a else None for a in addresses], trusted)
        assert index is not None
        chosen = addresses[index]
        if chosen is not None:
            scope["client"] = (chosen[0], chosen[1] or 0)
        else:
            # Not an address (``unknown``, or garbage from the client): say nothing rather
            # than report the proxy as the client.
            scope["client"] = None
    length = len(chain)
    _apply_proto_host(
        scope,
        _pick(protos, index, length),
        _pick(hosts, index, length),
        _pick(ports, index, length),
    )


def _apply_forwarded(
    scope: Scope, trusted: TrustedPeers, elements: list[dict[str, str] | None]
) -> None:
    # A malformed element counts as a hop we cannot vouch for: the walk stops there.
    hops = [element for element in elements if element is None or "for" in element]
    chosen: dict[str, str] | None
    if hops:
        nodes = [_parse_node(hop["for"]) if hop is not None else None for hop in hops]
        index = _choose([n[0] if n else None for n in nodes], trusted)
        assert index is not None
        chosen = hops[index]
        node = nodes[index]
        # RFC 7239 section 6: "unknown" and obfuscated identifiers ("_hidden") name no
        # address we could report.
        scope["client"] = (node[0], node[1] or 0) if node is not None else None
    elif elements:
        chosen = elements[-1]
    else:
        return
    if chosen is not None:
        _apply_proto_host(scope, chosen.get("proto"), chosen.get("host"), None)


def _apply_proto_host(
    scope: Scope, proto: str | None, host: str | None, port_text: str | None
) -> None:
    scheme: str | None = None
    if proto is not None:
        schemes = _SCHEMES.get(proto.lower())
        if schemes is not None:
            scheme = schemes[1] if scope["type"] == "websocket" else schemes[0]
            scope["scheme"] = scheme
    port: int | None = None
    if port_text is not None and port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    if host:
        parsed = _parse_host(host)
        if parsed is None:
            return
        name, host_port = parsed
        if port is None:
            port = host_port
        default_port = _DEFAULT_PORTS.get(scheme or scope["scheme"])
        if port is None:
            port = default_port
        scope["server"] = (name, port)
        # Frameworks build the request's URL from the Host header (Starlette's request.url,
        # Django's get_host()), not from ``server``: it must name the host the client asked for.
        authority = name if port is None or port == default_port else f"{name}:{port}"
        _set_host_header(scope, authority.encode("latin-1"))
    elif port is not None:
        server = scope.get("server")
        if server is not None and server[1] is not None:
            scope["server"] = (server[0], port)


def _set_host_header(scope: Scope, value: bytes) -> None:
    """Replace the request's Host header with ``value`` (in a new list: the old one may be
    shared with the server's own records of the request)."""
    headers = [(name, old) for name, old in scope["headers"] if name != b"host"]
    headers.append((b"host", value))
    scope["headers"] = headers


def _parse_node(node: str) -> tuple[str, int | None] | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]:80`` -> (canonical address, port); None for anything else (``unknown``,
    obfuscated identifiers, garbage)."""
    text = node.strip().strip('"')
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        text = text[1:end]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
        if not port_text.isdigit():
            return None
        port = int(port_text)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if port is not None and not 0 <= port < 65536:
        return None
    return str(address), port


_HOST_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]"
)


def _parse_host(host: str) -> tuple[str, int | None] | None:
    """``example.com``, ``example.com:8443``, ``[::1]:8443`` (RFC 3986 section 3.2.2)."""
    host = host.strip().strip('"')
    if not host or not all(c in _HOST_CHARS for c in host):
        return None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, sep, port_text = host.rpartition(":")
        if not sep:
            return host, None
        rest = ":" + port_text
    if not rest:
        return name, None
    port_text = rest[1:]
    if not rest.startswith(":") or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def parse_forwarded(value: str) -> list[dict[str, str] | None]:
    """RFC 7239 section 4: ``Forwarded`` as a list of elements (one per hop), each a dict of
    its parameters with lower-cased names and unquoted values, or None for an element that is
    malformed. An unterminated quoted string makes the whole value unusable (it may have
    swallowed the elements to its right): the result is then empty."""
    elements: list[dict[str, str] | None] = []
    for raw_element in _split_quoted(value, ","):
        if raw_element is None:
            return []
        element: dict[str, str] | None = {}
        for raw_pair in _split_quoted(raw_element, ";"):
            assert raw_pair is not None and element is not None
            name, sep, text = raw_pair.strip().partition("=")
            name = name.strip().lower()
            text = text.strip()
            if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
                text = _unquote(text[1:-1])
            elif '"' in text:
                text = ""
            # Each parameter at most once per element (section 4), with a token name.
            if not sep or not name or not text or name in element or not _is_token(name):
                element = None
                break
            element[name] = text
        if element is not None and not element:
            continue  # an empty element ("a, , b") carries nothing
        elements.append(element)
    return elements


def _split_quoted(value: str, separator: str) -> list[str | None]:
    """Split at ``separator`` outside quoted strings; [None] if a quote is unterminated."""
    parts: list[str | None] = []
    start = 0
    quoted = False
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:
        return [None]
    parts.append(value[start:])
    return [part for part in parts if part is None or part.strip()]


def _unquote(text: str) -> str:
    """RFC 9110 section 5.6.4: a quoted-pair is a backslash and the character it escapes."""
    if "\\" not in text:
        return text
    chars: list[str] = []
    escaped = False
    for char in text:
        if escaped or char != "\\":
            chars.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(chars)


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _is_token(name: str) -> bool:
    return all(c in _TOKEN for c in name)
