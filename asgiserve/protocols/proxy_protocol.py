"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-I/O.

Theory of operation
-------------------
A load balancer that forwards TCP (HAProxy ``send-proxy``/``send-proxy-v2``, AWS NLB, GCP,
Azure, ...) opens its own connection to us; to tell us who the client was it sends one header
before anything else: before the TLS handshake and before HTTP.

:func:`parse_proxy_header` takes the bytes received so far and returns :data:`INCOMPLETE`
(read more), a :class:`ProxyHeader` with the number of bytes it occupies, or raises
:class:`ProxyProtocolError`. It never consumes anything itself: the transport peeks at the
socket, asks, and then reads exactly ``length`` bytes, so that what follows (a TLS
ClientHello, say) stays in the socket for whoever comes next.

* Version 1 (spec section 2.1) is one text line, ``PROXY TCP4 <src> <dst> <sport> <dport>``
  and CRLF, at most 107 bytes. ``PROXY UNKNOWN ...`` means "use the connection's own
  addresses".
* Version 2 (section 2.2) is binary: a 12-byte signature, version/command, family/transport,
  a 16-bit length, the addresses, then TLVs (type-length-value extensions: ALPN, authority,
  SSL details, cloud-specific IDs), which we check for framing and skip. The ``LOCAL``
  command (health checks from the proxy itself) and the ``AF_UNSPEC`` family carry no client:
  the connection's own addresses stand.

Errors are the peer's fault and there is no protocol to answer them in: the caller closes the
connection (spec section 2: "the receiver must ... abort the connection").
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal

__all__ = [
    "INCOMPLETE",
    "MAX_V1_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "parse_proxy_header",
]

Mode = Literal["v1", "v2", "auto"]

#: Section 2.1: "the maximum line length ... is 107 bytes" (including the CRLF).
MAX_V1_LENGTH: Final = 107
V1_PREFIX: Final = b"PROXY "
#: Section 2.2: the 12-byte binary signature of version 2.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16
_V2_HEAD = struct.Struct("!12sBBH")
# Address block sizes by family (section 2.2): two IPv4 addresses and two ports, the same for
# IPv6, and two 108-byte unix socket paths.
_INET, _INET6, _UNIX = 0x1, 0x2, 0x3
_ADDRESS_LENGTHS = {_INET: 12, _INET6: 36, _UNIX: 216}
_STREAM, _DGRAM = 0x1, 0x2


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; close the connection."""


class _Incomplete:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INCOMPLETE"


#: More bytes are needed before the header can be judged.
INCOMPLETE: Final = _Incomplete()


class ProxyHeader:
    """A parsed header. ``source``/``destination`` are None when the header carries no
    addresses to use (``LOCAL``, ``UNKNOWN``, ``AF_UNSPEC``, unix sockets): the connection's
    own addresses stand. ``length`` is the number of bytes the header occupies; 0 when
    ``auto`` found no header at all."""

    __slots__ = ("destination", "length", "source", "tlvs", "version")

    def __init__(
        self,
        *,
        version: int,
        length: int,
        source: tuple[str, int] | None = None,
        destination: tuple[str, int] | None = None,
        tlvs: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        self.version = version
        self.length = length
        self.source = source
        self.destination = destination
        self.tlvs = tlvs

    def __repr__(self) -> str:
        return (
            f"ProxyHeader(version={self.version}, length={self.length}, "
            f"source={self.source}, destination={self.destination})"
        )


def parse_proxy_header(data: bytes, mode: Mode) -> ProxyHeader | _Incomplete:
    """Judge the first bytes of a connection; see the module docstring."""
    if mode == "v1" or (mode == "auto" and data[:1] == b"P"):
        if len(data) < len(V1_PREFIX):
            if V1_PREFIX.startswith(data):
                return INCOMPLETE
        elif data.startswith(V1_PREFIX):
            return _parse_v1(data)
        if mode == "v1":
            raise ProxyProtocolError("expected a PROXY protocol v1 header")
        return ProxyHeader(version=0, length=0)
    if mode == "v2" or (mode == "auto" and data[:1] == b"\r"):
        if len(data) < len(V2_SIGNATURE):
            if V2_SIGNATURE.startswith(data):
                return INCOMPLETE
        elif data.startswith(V2_SIGNATURE):
            return _parse_v2(data)
        if mode == "v2":
            raise ProxyProtocolError("expected a PROXY protocol v2 header")
        return ProxyHeader(version=0, length=0)
    if mode == "auto":
        # Neither signature: a direct client (``auto`` serves both during a migration).
        return ProxyHeader(version=0, length=0) if data else INCOMPLETE
    raise ValueError(f"unknown PROXY protocol mode {mode!r}")


def _parse_v1(data: bytes) -> ProxyHeader | _Incomplete:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in data:
            raise ProxyProtocolError("PROXY v1 header not terminated by CRLF")
        return INCOMPLETE
    length = end + 2
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    family = parts[1] if len(parts) > 1 else ""
    if family == "UNKNOWN":
        # Section 2.1: the rest of the line is to be ignored.
        return ProxyHeader(version=1, length=length)
    if family not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyProtocolError(f"bad PROXY v1 header {line!r}")
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(parts[2], version), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], version), _v1_port(parts[5]))
    return ProxyHeader(version=1, length=length, source=source, destination=destination)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad address {text!r} in PROXY v1 header") from None
    if address.version != version:
        raise ProxyProtocolError(f"{text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    # Section 2.1: a decimal number from 0 to 65535, no leading zeroes.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"bad port {text!r} in PROXY v1 header")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"bad port {text!r} in PROXY v1 header")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | _Incomplete:
    if len(data) < _V2_FIXED:
        return INCOMPLETE
    _, version_command, family_transport, size = _V2_HEAD.unpack_from(data)
    if version_command >> 4 != 0x2:
        raise ProxyProtocolError(f"unsupported PROXY v2 version {version_command >> 4}")
    command = version_command & 0x0F
    if command > 0x1:
        raise ProxyProtocolError(f"unknown PROXY v2 command {command:#x}")
    length = _V2_FIXED + size
    if len(data) < length:
        return INCOMPLETE
    body = data[_V2_FIXED:length]
    if command == 0x0:
        # LOCAL: the proxy's own connection (a health check, say). Section 2.2: the receiver
        # must use the real connection endpoints and discard the protocol block, family
        # included.
        return ProxyHeader(version=2, length=length)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family > _UNIX or transport > _DGRAM:
        raise ProxyProtocolError(f"unknown PROXY v2 family/transport {family_transport:#x}")
    address_length = _ADDRESS_LENGTHS.get(family, 0)
    if size < address_length:
        raise ProxyProtocolError("PROXY v2 address block shorter than its family needs")
    tlvs = _parse_tlvs(body[address_length:])
    if family == 0 or transport == 0:
        # AF_UNSPEC / UNSPEC: the receiver must ignore the address block and use the
        # connection's real addresses.
        return ProxyHeader(version=2, length=length, tlvs=tlvs)
    if transport == _DGRAM:
        raise ProxyProtocolError("PROXY v2 header for a datagram connection on a TCP listener")
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    if family == _INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif family == _INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    # AF_UNIX: paths, not addresses an ASGI "client" can carry; the connection's stand.
    return ProxyHeader(version=2, length=length, source=source, destination=destination, tlvs=tlvs)


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Section 2.2.7: type (1 byte), length (2 bytes), value. Checked for framing only."""
    tlvs: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while i < n:
        if n - i < 3:
            # Padding is allowed only as a PP2_TYPE_NOOP TLV; stray bytes are an error.
            raise ProxyProtocolError("truncated TLV in PROXY v2 header")
        kind, size = data[i], int.from_bytes(data[i + 1 : i + 3], "big")
        end = i + 3 + size
        if end > n:
            raise ProxyProtocolError("TLV longer than the PROXY v2 header")
        tlvs.append((kind, data[i + 3 : end]))
        i = end
    return tuple(tlvs)
