"""The PROXY protocol (HAProxy's spec, v1 and v2): the sans-I/O parser, then the server.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import time
from typing import Any

import pytest
import trustme

from asgiserve.protocols.proxy_protocol import (
    INCOMPLETE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"


def v2(
    source: str = "203.0.113.7",
    destination: str = "192.0.2.1",
    ports: tuple[int, int] = (56324, 443),
    *,
    command: int = 0x1,
    family: int | None = None,
    transport: int = 0x1,
    tlvs: bytes = b"",
    version: int = 0x2,
) -> bytes:
    """A version 2 header (spec section 2.2)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    if family is None:
        family = 0x1 if src.version == 4 else 0x2
    if family in (0x1, 0x2):
        addresses = src.packed + dst.packed + struct.pack("!HH", *ports)
    elif family == 0x3:
        addresses = b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")
    else:
        addresses = b""
    body = addresses + tlvs
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, (family << 4) | transport])
        + struct.pack("!H", len(body))
        + body
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def parsed(data: bytes, mode: Any = "auto") -> ProxyHeader:
    result = parse_proxy_header(data, mode)
    assert isinstance(result, ProxyHeader)
    return result


# -- version 1 -----------------------------------------------------------------------------------


def test_v1_tcp4_header_and_its_length() -> None:
    header = parsed(V1 + b"GET / HTTP/1.1\r\n", "v1")
    assert (header.version, header.length) == (1, len(V1))
    assert header.source == ("203.0.113.7", 56324)
    assert header.destination == ("192.0.2.1", 443)


def test_v1_tcp6_header() -> None:
    header = parsed(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n", "v1")
    assert header.source == ("2001:db8::7", 1)


def test_v1_unknown_keeps_the_connections_addresses() -> None:
    # Section 2.1: with UNKNOWN, the rest of the line is ignored.
    header = parsed(b"PROXY UNKNOWN whatever\r\n", "v1")
    assert header.source is None and header.length == 24


@pytest.mark.parametrize("cut", [1, 5, 6, 20, len(V1) - 1])
def test_v1_incomplete_header_asks_for_more(cut: int) -> None:
    assert parse_proxy_header(V1[:cut], "v1") is INCOMPLETE


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",  # IPv6 in TCP4
        b"PROXY TCP5 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 01 2\r\n",  # leading zero
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n",  # LF without CR
        b"PROXY " + b"x" * 120,  # longer than 107 bytes without CRLF
        b"GET / HTTP/1.1\r\n",  # no header where one is required
    ],
)
def test_v1_malformed_headers_are_errors(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line, "v1")


# -- version 2 -----------------------------------------------------------------------------------


def test_v2_ipv4_header_and_its_length() -> None:
    data = v2()
    header = parsed(data + b"\x16\x03\x01", "v2")
    assert (header.version, header.length) == (2, len(data))
    assert header.source == ("203.0.113.7", 56324)
    assert header.destination == ("192.0.2.1", 443)


def test_v2_ipv6_header_with_tlvs_skipped() -> None:
    # PP2_TYPE_ALPN (0x01) and PP2_TYPE_AUTHORITY (0x02), section 2.2.7.
    data = v2("2001:db8::7", "2001:db8::1", tlvs=tlv(0x01, b"h2") + tlv(0x02, b"example.com"))
    header = parsed(data, "v2")
    assert header.source == ("2001:db8::7", 56324)
    assert header.tlvs == ((0x01, b"h2"), (0x02, b"example.com"))
    assert header.length == len(data)


def test_v2_local_command_keeps_the_connections_addresses() -> None:
    # Section 2.2: LOCAL (health checks by the proxy) -- addresses and family are ignored.
    header = parsed(v2(command=0x0), "v2")
    assert header.source is None
    assert parsed(V2_SIGNATURE + b"\x20\x00\x00\x00", "v2").source is None


def test_v2_unspec_family_and_unix_sockets_carry_no_client() -> None:
    assert parsed(v2(family=0x0, transport=0x0), "v2").source is None
    assert parsed(v2(family=0x3), "v2").source is None


@pytest.mark.parametrize("cut", [1, 12, 15, 16, 20])
def test_v2_incomplete_header_asks_for_more(cut: int) -> None:
    assert parse_proxy_header(v2()[:cut], "v2") is INCOMPLETE


@pytest.mark.parametrize(
    "data",
    [
        v2(version=0x1),
        v2(command=0x2),
        v2(transport=0x2),  # a datagram header on a TCP listener
        v2(tlvs=b"\x01\x00"),  # a truncated TLV
        v2(tlvs=b"\x01\x00\x0ah2"),  # a TLV claiming more bytes than the header has
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4,  # address block too short for INET
        V2_SIGNATURE + b"\x21\x41\x00\x00",  # unknown family
        b"\r\n\r\n\x00\r\nQUIX\n" + b"\0" * 8,
    ],
)
def test_v2_malformed_headers_are_errors(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data, "v2")


# -- auto ----------------------------------------------------------------------------------------


def test_auto_accepts_either_version_or_none() -> None:
    assert parsed(V1, "auto").version == 1
    assert parsed(v2(), "auto").version == 2
    none = parsed(b"GET / HTTP/1.1\r\n", "auto")
    assert (none.version, none.length, none.source) == (0, 0, None)
    assert parsed(b"POST / HTTP/1.1\r\n", "auto").length == 0


def test_auto_waits_while_a_prefix_is_ambiguous() -> None:
    assert parse_proxy_header(b"P", "auto") is INCOMPLETE
    assert parse_proxy_header(b"PROX", "auto") is INCOMPLETE
    assert parse_proxy_header(b"\r\n\r\n", "auto") is INCOMPLETE
    assert parsed(b"PO", "auto").length == 0
    assert parsed(b"\r\nGET", "auto").length == 0


# -- the server ----------------------------------------------------------------------------------


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    report = {
        "client": scope["client"],
        "server": scope["server"],
        "scheme": scope["scheme"],
        "tls": "tls" in scope["extensions"],
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(report).encode()})


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for part in parts:
            sock.sendall(part)
            if pause:
                time.sleep(pause)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            # Closed with our bytes unread: the kernel resets rather than sending a FIN.
            pass
    return data


def report_of(response: bytes) -> dict[str, Any]:
    assert response.startswith(b"HTTP/1.1 200"), response
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("header", [V1, v2()], ids=["v1", "v2"])
def test_client_and_server_addresses_come_from_the_header(serve: Any, header: bytes) -> None:
    server = serve(whoami, proxy_protocol="auto")
    report = report_of(exchange(server.port, header + REQUEST))
    assert report["client"] == ["203.0.113.7", 56324]
    assert report["server"] == ["192.0.2.1", 443]


def test_header_split_across_packets_is_reassembled(serve: Any) -> None:
    server = serve(whoami, proxy_protocol="v1")
    report = report_of(exchange(server.port, V1[:3], V1[3:20], V1[20:] + REQUEST, pause=0.05))
    assert report["client"] == ["203.0.113.7", 56324]
    server2 = serve(whoami, proxy_protocol="auto")
    header = v2()
    report = report_of(
        exchange(server2.port, header[:1], header[1:14], header[14:], REQUEST, pause=0.05)
    )
    assert report["client"] == ["203.0.113.7", 56324]


def test_local_command_keeps_the_real_peer(serve: Any) -> None:
    server = serve(whoami, proxy_protocol="v2")
    report = report_of(exchange(server.port, v2(command=0x0) + REQUEST))
    assert report["client"][0] == "127.0.0.1"


def test_auto_serves_clients_without_a_header(serve: Any) -> None:
    server = serve(whoami, proxy_protocol="auto")
    assert report_of(exchange(server.port, REQUEST))["client"][0] == "127.0.0.1"
    # "P" alone is ambiguous ("PROXY" or "POST"): the server waits for more, then decides.
    response = exchange(
        server.port,
        b"P",
        b"OST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        pause=0.05,
    )
    assert report_of(response)["client"][0] == "127.0.0.1"


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize(
    ("mode", "data"),
    [("v1", REQUEST), ("v2", V1 + REQUEST), ("v1", b"PROXY TCP4 nonsense\r\n" + REQUEST)],
    ids=["v1-missing", "v2-got-v1", "v1-garbage"],
)
def test_malformed_or_missing_header_closes_without_a_response(
    serve: Any, mode: str, data: bytes
) -> None:
    server = serve(whoami, proxy_protocol=mode)
    assert exchange(server.port, data) == b""


def test_header_that_never_arrives_times_out(serve: Any) -> None:
    server = serve(whoami, proxy_protocol="v2", timeout_proxy_protocol=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(V2_SIGNATURE[:5])
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 3


@pytest.mark.usefixtures("backend")
def test_header_is_read_before_tls(serve: Any, tmp_path: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile = tmp_path / "cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    server = serve(whoami, proxy_protocol="v2", ssl_certfile=str(certfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(v2("2001:db8::7", "2001:db8::1"))
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(REQUEST)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    report = report_of(data)
    assert report["client"] == ["2001:db8::7", 56324]
    assert report["scheme"] == "https"
    assert report["tls"] is True


def test_server_shuts_down_with_a_header_pending(serve: Any) -> None:
    server = serve(whoami, proxy_protocol="v1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4")
        time.sleep(0.1)
        server.stop()
        assert server.thread is not None and not server.thread.is_alive()
        assert sock.recv(1024) == b""
