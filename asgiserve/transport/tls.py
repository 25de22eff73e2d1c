"""The ASGI ``tls`` extension: what a TLS connection tells the app about itself.

Spec: https://asgi.readthedocs.io/en/latest/specs/tls.html (asgiref ``specs/tls.rst``, 0.2).
Built once per connection, in ``connection_made`` (the handshake is complete by then), and
shared by the scopes of every request on the connection. The parts that are the same for
every connection (our certificate as PEM, cipher suite numbers) are worked out once, when the
SSL context is built (:func:`asgiserve.loading.load_tls`).
"""

from __future__ import annotations

import re
import ssl
from typing import Any

__all__ = ["TLSInfo", "rfc4514_name", "server_cert_pem", "tls_extension"]

#: TLS ``ProtocolVersion`` values (RFC 8446 section 4.1.2, RFC 5246 appendix A.1) by the names
#: ``SSLObject.version()`` returns; the spec's ``tls_version`` is this integer.
TLS_VERSION_NUMBERS = {
    "SSLv3": 0x0300,
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}

# RFC 4514 section 3: the attribute type names a DN string uses; OpenSSL's long names (what
# ``getpeercert()`` reports) mapped to them. Others keep OpenSSL's name.
_RFC4514_TYPES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class TLSInfo:
    """Per-listener facts for the ``tls`` extension, as plain values."""

    __slots__ = ("cipher_ids", "server_cert")

    def __init__(self, *, server_cert: str | None, cipher_ids: dict[str, int]) -> None:
        #: Our certificate, PEM (the first one in ``--ssl-certfile``).
        self.server_cert = server_cert
        #: OpenSSL cipher name -> IANA cipher suite number (e.g. 0x1301).
        self.cipher_ids = cipher_ids

    @classmethod
    def from_context(cls, context: ssl.SSLContext, server_cert: str | None) -> TLSInfo:
        # get_ciphers()' "id" is OpenSSL's: 0x03000000 | the two-byte IANA value.
        ids = {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}
        return cls(server_cert=server_cert, cipher_ids=ids)


def server_cert_pem(certfile_text: str) -> str | None:
    """The first certificate of a PEM file (the server's own; a chain may follow)."""
    match = _PEM_CERTIFICATE.search(certfile_text)
    return match.group(0).replace("\r\n", "\n") + "\n" if match else None


def tls_extension(ssl_object: Any, info: TLSInfo) -> dict[str, Any]:
    """The extension's dict for one connection; ``ssl_object`` is the transport's
    ``ssl.SSLObject`` after the handshake."""
    chain: list[str] = []
    name: str | None = None
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        # Python 3.13+ can give the whole chain the client sent; before, only its leaf.
        get_chain = getattr(ssl_object, "get_unverified_chain", None)
        sent = get_chain() if get_chain is not None else None
        if sent:
            chain = [ssl.DER_cert_to_PEM_cert(bytes(cert)) for cert in sent]
        else:
            chain = [ssl.DER_cert_to_PEM_cert(der)]
        name = rfc4514_name(ssl_object.getpeercert().get("subject", ()))
    cipher = ssl_object.cipher()
    return {
        "server_cert": info.server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        # OpenSSL aborts the handshake when a client certificate fails verification, so a
        # connection that reaches the app never has one that failed.
        "client_cert_error": None,
        "tls_version": TLS_VERSION_NUMBERS.get(ssl_object.version() or ""),
        "cipher_suite": info.cipher_ids.get(cipher[0]) if cipher else None,
    }


def rfc4514_name(subject: Any) -> str | None:
    """``getpeercert()["subject"]`` (RDNs in certificate order) as an RFC 4514 string:
    RDNs in reverse order (section 2.1), multi-valued RDNs joined with ``+`` (2.2), values
    escaped (2.4)."""
    if not subject:
        return None
    return ",".join(
        "+".join(f"{_RFC4514_TYPES.get(k, k)}={_escape_value(v)}" for k, v in rdn)
        for rdn in reversed(subject)
    )


def _escape_value(value: str) -> str:
    escaped = []
    for i, char in enumerate(value):
        if (
            char in '"+,;<>\\'
            or (char == "#" and i == 0)
            or (char == " " and (i == 0 or i == len(value) - 1))
        ):
            escaped.append("\\" + char)
        elif char == "\x00":
            escaped.append("\\00")
        else:
            escaped.append(char)
    return "".join(escaped)
