"""TLS: HTTPS and WSS, client certificates, the ASGI ``tls`` extension, the handshake timeout.

Certificates come from ``trustme`` (a throwaway CA). The ``tls`` extension is specified at
https://asgi.readthedocs.io/en/latest/specs/tls.html.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from websockets.asyncio.client import connect

from asgiserve.config import Config, ConfigError
from asgiserve.loading import LoadError, alpn_protocols, create_ssl_context, load_tls
from asgiserve.transport.tls import rfc4514_name, server_cert_pem
from tests.conftest import start_cli


@dataclass
class PKI:
    ca: trustme.CA
    other_ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    stranger: trustme.LeafCert
    certfile: str
    keyfile: str
    ca_file: str
    directory: Path

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("alice@example.org", common_name="alice")
    stranger = other_ca.issue_cert("mallory@example.org", common_name="mallory")
    certfile, keyfile, ca_file = (directory / n for n in ("cert.pem", "key.pem", "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(certfile))
    server.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    return PKI(
        ca, other_ca, server, client, stranger, str(certfile), str(keyfile), str(ca_file), directory
    )


async def tls_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the scheme and the tls extension, as JSON (HTTP and WebSocket)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    report = json.dumps({"scheme": scope["scheme"], "tls": scope["extensions"].get("tls")}).encode()
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": report.decode()})
        await send({"type": "websocket.close"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": report})


def tls_options(pki: PKI, **extra: Any) -> dict[str, Any]:
    return {"ssl_certfile": pki.certfile, "ssl_keyfile": pki.keyfile, **extra}


def fetch(port: int, context: ssl.SSLContext, path: str = "/") -> dict[str, Any]:
    with httpx.Client(verify=context) as client:
        response = client.get(f"https://localhost:{port}{path}")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


# -- HTTPS -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_https_scope_has_scheme_https_and_the_tls_extension(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki))
    report = fetch(server.port, pki.client_context())
    assert report["scheme"] == "https"
    tls = report["tls"]
    assert tls["server_cert"] == pki.server.cert_chain_pems[0].bytes().decode()
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    # Spec: the TLS version and cipher suite as the protocol's own numbers.
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)


def test_cipher_suite_and_version_numbers_for_tls12(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki))
    context = pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    tls = fetch(server.port, context)["tls"]
    assert tls["tls_version"] == 0x0303
    # RFC 5289: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is {0xC0,0x2F}, the ECDSA one {0xC0,0x2B}.
    assert tls["cipher_suite"] in (0xC02F, 0xC02B)


def test_plain_http_has_no_tls_extension(serve: Any) -> None:
    # Spec: "For non-TLS connections, the ASGI server is forbidden from providing this
    # extension."
    server = serve(tls_app)
    report = httpx.get(f"http://127.0.0.1:{server.port}/").json()
    assert report == {"scheme": "http", "tls": None}


def test_alpn_offers_http11_and_h2_first_when_http2_is_on(serve: Any, pki: PKI) -> None:
    assert alpn_protocols(http2=False) == ["http/1.1"]
    assert alpn_protocols(http2=True) == ["h2", "http/1.1"]
    server = serve(tls_app, http2=False, **tls_options(pki))
    context = pki.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_minimum_tls_version_refuses_older_clients(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, ssl_version="TLSv1_3"))
    context = pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        fetch(server.port, context)
    assert fetch(server.port, pki.client_context())["tls"]["tls_version"] == 0x0304


def test_encrypted_key_with_its_password(serve: Any, pki: PKI) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), password=None)
    encrypted = pki.directory / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    server = serve(
        tls_app,
        ssl_certfile=pki.certfile,
        ssl_keyfile=str(encrypted),
        ssl_keyfile_password="s3cret",
    )
    assert fetch(server.port, pki.client_context())["scheme"] == "https"
    with pytest.raises(LoadError, match="password"):
        create_ssl_context(
            Config.from_options("x:y", ssl_certfile=pki.certfile, ssl_keyfile=str(encrypted)).tls
        )


# -- client certificates (mTLS) ----------------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_client_certificate_is_verified_and_reported(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, ssl_cert_reqs=2, ssl_ca_certs=pki.ca_file))
    tls = fetch(server.port, pki.client_context(pki.client))["tls"]
    leaf = pki.client.cert_chain_pems[0].bytes().decode()
    assert tls["client_cert_chain"][0] == leaf
    # RFC 4514 form, checked against cryptography's own rendering of the same certificate.
    expected = x509.load_pem_x509_certificate(leaf.encode()).subject.rfc4514_string()
    assert tls["client_cert_name"] == expected
    assert "CN=alice" in expected
    assert tls["client_cert_error"] is None


def test_required_client_certificate_refuses_a_client_without_one(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, ssl_cert_reqs=2, ssl_ca_certs=pki.ca_file))
    with pytest.raises(httpx.TransportError):
        fetch(server.port, pki.client_context())


def test_client_certificate_from_an_unknown_ca_is_refused(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, ssl_cert_reqs=1, ssl_ca_certs=pki.ca_file))
    with pytest.raises(httpx.TransportError):
        fetch(server.port, pki.client_context(pki.stranger))


def test_optional_client_certificate_may_be_left_out(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, ssl_cert_reqs=1, ssl_ca_certs=pki.ca_file))
    assert fetch(server.port, pki.client_context())["tls"]["client_cert_chain"] == []
    with_cert = fetch(server.port, pki.client_context(pki.client))["tls"]
    assert with_cert["client_cert_name"] is not None


# -- handshake timeout -------------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_client_that_never_handshakes_is_dropped(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki, timeout_tls_handshake=0.3))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        # No ClientHello: the server must give up on its own.
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 3
    # And the listener still serves everyone else.
    assert fetch(server.port, pki.client_context())["scheme"] == "https"


# -- WebSocket over TLS ------------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_wss_scope_has_scheme_wss_and_the_tls_extension(serve: Any, pki: PKI) -> None:
    server = serve(tls_app, **tls_options(pki))

    async def main() -> dict[str, Any]:
        async with connect(
            f"wss://localhost:{server.port}/ws", ssl=pki.client_context()
        ) as websocket:
            return json.loads(await websocket.recv())  # type: ignore[no-any-return]

    report = asyncio.run(main())
    assert report["scheme"] == "wss"
    assert report["tls"]["tls_version"] == 0x0304
    assert report["tls"]["server_cert"].startswith("-----BEGIN CERTIFICATE-----")


# -- configuration and loading -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_keyfile": "k.pem"}, "without --ssl-certfile"),
        ({"ssl_certfile": "c.pem", "ssl_cert_reqs": 2}, "--ssl-ca-certs"),
        ({"ssl_certfile": "c.pem", "ssl_cert_reqs": 3}, "--ssl-cert-reqs"),
        ({"ssl_certfile": "c.pem", "ssl_version": "SSLv3"}, "--ssl-version"),
    ],
)
def test_tls_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_options("x:y", **options)


@pytest.mark.parametrize("spelling", ["TLSv1_3", "TLSv1.3", "tlsv1_3", "1.3"])
def test_tls_version_spellings(pki: PKI, spelling: str) -> None:
    config = Config.from_options(
        "x:y", ssl_certfile=pki.certfile, ssl_keyfile=pki.keyfile, ssl_version=spelling
    )
    assert create_ssl_context(config.tls).minimum_version is ssl.TLSVersion.TLSv1_3


def test_missing_certificate_file_is_a_load_error(tmp_path: Path) -> None:
    config = Config.from_options("x:y", ssl_certfile=str(tmp_path / "missing.pem"))
    with pytest.raises(LoadError, match="missing.pem"):
        load_tls(config.tls)


def test_bad_cipher_list_is_a_load_error(pki: PKI) -> None:
    config = Config.from_options("x:y", **tls_options(pki, ssl_ciphers="NO-SUCH-CIPHER"))
    with pytest.raises(LoadError, match="ssl-ciphers"):
        load_tls(config.tls)


def test_server_cert_pem_is_the_first_certificate_of_the_file() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("example.org")
    chain_file = b"".join(blob.bytes() for blob in leaf.cert_chain_pems).decode()
    assert server_cert_pem(leaf.private_key_pem.bytes().decode() + chain_file) == (
        leaf.cert_chain_pems[0].bytes().decode()
    )
    assert server_cert_pem("no certificate here") is None


def test_rfc4514_name_reverses_rdns_and_escapes_values() -> None:
    subject = (
        (("countryName", "GB"),),
        (("organizationName", "Widgets, Inc."),),
        (("commonName", " lead "), ("userId", "#x+y")),
    )
    # RFC 4514 section 2.1 (last RDN first), 2.2 (multi-valued with +), 2.4 (escapes).
    assert rfc4514_name(subject) == "CN=\\ lead\\ +UID=\\#x\\+y,O=Widgets\\, Inc.,C=GB"
    assert rfc4514_name(()) is None


# -- through the real CLI ----------------------------------------------------------------------


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "tlsapp.py").write_text(
        "from tests.test_tls import tls_app as app\n", encoding="utf-8"
    )
    yield tmp_path


def test_cli_serves_https_and_announces_it(pki: PKI, app_module: Path) -> None:
    server = start_cli(
        "tlsapp:app",
        "--app-dir",
        str(app_module),
        "--ssl-certfile",
        pki.certfile,
        "--ssl-keyfile",
        pki.keyfile,
    )
    try:
        assert server.address.startswith("https://127.0.0.1:")
        assert fetch(server.port, pki.client_context())["scheme"] == "https"
    finally:
        assert server.stop() == 0


def test_cli_exits_1_with_a_clear_message_for_a_bad_certificate(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, _env

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    result = subprocess.run(
        [sys.executable, "-m", "asgiserve", "tests.apps:app", "--ssl-certfile", str(bad)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Cannot load the certificate" in result.stderr


def test_alpn_h2_serves_http2_with_the_tls_extension(serve: Any, pki: PKI) -> None:
    pytest.importorskip("h2")
    server = serve(tls_app, **tls_options(pki))
    with httpx.Client(verify=pki.client_context(), http2=True) as client:
        response = client.get(f"https://localhost:{server.port}/")
    assert response.http_version == "HTTP/2"
    report = response.json()
    assert report["scheme"] == "https"
    assert report["tls"]["tls_version"] == 0x0304
