"""Starlette and FastAPI apps behave under the real ``asgiserve`` CLI as they do anywhere else.

One server process per app × HTTP parser serves every test of this module (started on first
use, stopped with SIGTERM at the end), so each behaviour below runs against four live servers:
Starlette and FastAPI, each with ``--http httptools`` and ``--http h11``. The apps live in
``tests/e2e/apps/`` and are imported by the CLI as ``tests.e2e.apps.<name>:app`` (namespace
packages: the CLI runs from the repo root).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import CLIServer, start_cli

APPS = {
    "starlette": "tests.e2e.apps.starlette_app:app",
    "fastapi": "tests.e2e.apps.fastapi_app:app",
}
PARSERS = [
    pytest.param(
        "httptools",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("httptools") is None, reason="needs httptools"
        ),
    ),
    "h11",
]
ALLOWED_ORIGIN = "https://allowed.example"  # the one origin both apps' CORSMiddleware allows
STREAM_CHUNKS = 100  # what /stream yields, one "chunk NNN\n" line each
ONE_MIB = 1024 * 1024

# The servers speak plain HTTP: a bare client context spares every httpx.Client from loading
# the CA bundle (~80 ms each, which would dominate this module's runtime).
_NO_CA_BUNDLE = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@dataclass(frozen=True)
class Served:
    framework: str
    parser: str
    cli: CLIServer

    @property
    def url(self) -> str:
        return self.cli.url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, verify=_NO_CA_BUNDLE)

    def log(self) -> str:
        return "".join(self.cli.lines)


def _stop(server: CLIServer) -> None:
    server.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[[str, str], Served]]:
    """``servers(framework, parser)``: the module's shared server for that pair, started once."""
    started: dict[tuple[str, str], Served] = {}

    def get(framework: str, parser: str) -> Served:
        key = (framework, parser)
        if key not in started:
            cli = start_cli(APPS[framework], "--http", parser, "--no-access-log")
            assert f"http: {parser}" in "".join(cli.lines)  # the backend really is in use
            started[key] = Served(framework, parser, cli)
        return started[key]

    yield get
    for served in started.values():
        _stop(served.cli)


@pytest.fixture(scope="module", params=list(APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(servers: Callable[[str, str], Served], framework: str, parser: str) -> Served:
    return servers(framework, parser)


@pytest.fixture(scope="module")
def fastapi_server(servers: Callable[[str, str], Served], parser: str) -> Served:
    return servers("fastapi", parser)


@pytest.fixture(scope="module")
def starlette_server(servers: Callable[[str, str], Served], parser: str) -> Served:
    return servers("starlette", parser)


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _poll(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# -- lifespan -----------------------------------------------------------------------------------


def test_lifespan_state_is_visible_to_requests_as_request_state(
    client: httpx.Client, server: Served
) -> None:
    response = client.get("/lifespan")

    assert response.status_code == 200
    assert response.json() == {"framework": server.framework}


@pytest.mark.parametrize("app", list(APPS))
def test_lifespan_shutdown_runs_when_the_server_gets_sigterm(tmp_path: Path, app: str) -> None:
    # Its own server (default parser): lifespan does not depend on the HTTP parser.
    events = tmp_path / "lifespan.log"
    server = start_cli(APPS[app], "--no-access-log", env={"E2E_LIFESPAN_LOG": str(events)})
    try:
        assert events.read_text() == "startup\n"

        server.signal(signal.SIGTERM)

        assert server.wait() == 0
        assert events.read_text() == "startup\nshutdown\n"
    finally:
        _stop(server)
    assert "Application shutdown complete." in "".join(server.lines)


# -- routing and path parameters ----------------------------------------------------------------


def test_item_created_is_found_again_through_its_int_path_parameter(
    client: httpx.Client,
) -> None:
    # Both apps key items by int: the lookup only succeeds if "/items/<id>" was converted.
    created = client.post("/items", json={"name": "lamp", "price": 12.0}).json()

    response = client.get(f"/items/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_request_to_an_unknown_route_is_404(client: httpx.Client) -> None:
    assert client.get("/no/such/route").status_code == 404


def test_non_integer_path_parameter_does_not_match_the_int_route_in_starlette(
    starlette_server: Served,
) -> None:
    with starlette_server.client() as client:
        assert client.get("/items/lamp").status_code == 404


def test_non_integer_path_parameter_is_422_naming_it_in_fastapi(fastapi_server: Served) -> None:
    with fastapi_server.client() as client:
        response = client.get("/items/lamp")

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["path", "item_id"]]


# -- query parameters ---------------------------------------------------------------------------


def test_query_parameters_keep_repeated_keys_and_decode_percent_encoded_utf8(
    client: httpx.Client,
) -> None:
    response = client.get("/search?q=caf%C3%A9&tag=new&tag=on%20sale")

    assert response.status_code == 200
    assert response.json() == {"q": "café", "tags": ["new", "on sale"]}


# -- JSON bodies --------------------------------------------------------------------------------


def test_valid_json_body_is_parsed_and_echoed_back(client: httpx.Client) -> None:
    item = {"name": "widget", "price": 9.5, "tags": ["blue", "small"]}

    response = client.post("/items", json=item)

    assert response.status_code == 201
    body = response.json()
    assert isinstance(body["id"], int)
    assert body == {"id": body["id"], **item}


def test_json_body_failing_validation_is_422_naming_the_field_in_fastapi(
    fastapi_server: Served,
) -> None:
    with fastapi_server.client() as client:
        response = client.post("/items", json={"name": "widget", "price": "cheap"})

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "price"]]


def test_malformed_json_body_is_400_in_starlette(starlette_server: Served) -> None:
    with starlette_server.client() as client:
        response = client.post(
            "/items", content=b'{"name": "widget",', headers={"content-type": "application/json"}
        )

    assert response.status_code == 400
    assert response.json() == {"detail": "request body is not valid JSON"}


# -- sessions -----------------------------------------------------------------------------------


def test_request_without_a_session_cookie_is_anonymous(client: httpx.Client) -> None:
    assert client.get("/me").status_code == 401


def test_session_set_at_login_is_seen_by_the_next_request_carrying_the_cookie(
    client: httpx.Client,
) -> None:
    login = client.post("/login", json={"user": "alice"})
    assert login.status_code == 200
    assert "session" in client.cookies

    response = client.get("/me")  # httpx.Client sends the session cookie back

    assert response.status_code == 200
    assert response.json() == {"user": "alice"}


# -- multipart uploads --------------------------------------------------------------------------


def test_multipart_upload_of_1_mib_file_arrives_intact_with_its_form_field(
    client: httpx.Client,
) -> None:
    data = random.Random(1).randbytes(ONE_MIB)

    response = client.post(
        "/upload",
        files={"file": ("blob.bin", data, "application/octet-stream")},
        data={"description": "one mebibyte of noise"},
    )

    assert response.status_code == 200
    assert response.json() == {
        "filename": "blob.bin",
        "size": ONE_MIB,
        "sha256": hashlib.sha256(data).hexdigest(),
        "description": "one mebibyte of noise",
    }


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_preflight_from_an_allowed_origin_gets_the_allow_headers(
    client: httpx.Client,
) -> None:
    response = client.options(
        "/items",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"].split(", ")


def test_cors_preflight_from_a_disallowed_origin_gets_no_allow_origin_header(
    client: httpx.Client,
) -> None:
    response = client.options(
        "/items",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )

    assert response.status_code == 400  # Starlette's CORSMiddleware: "Disallowed CORS origin"
    assert "access-control-allow-origin" not in response.headers


# -- streaming ----------------------------------------------------------------------------------


def test_streaming_response_is_sent_chunked_and_arrives_complete(client: httpx.Client) -> None:
    response = client.get("/stream")

    assert response.status_code == 200
    # RFC 9112 section 6.1: a body of unknown length on HTTP/1.1 is sent chunked.
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.text == "".join(f"chunk {i:03d}\n" for i in range(STREAM_CHUNKS))


# -- background tasks ---------------------------------------------------------------------------


def test_background_task_runs_after_the_response_has_been_sent(
    client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    # The task waits until /release is called, so the 202 (and the "pending" status after it)
    # can only arrive if the server sent the response before the task finished.
    job = f"job-{request.node.callspec.id}"

    started = client.post(f"/jobs/{job}")
    assert started.status_code == 202
    assert client.get(f"/jobs/{job}").json()["status"] == "pending"

    assert client.post(f"/jobs/{job}/release").status_code == 204

    assert _poll(lambda: client.get(f"/jobs/{job}").json()["status"] == "done")


# -- FastAPI docs -------------------------------------------------------------------------------


def test_fastapi_docs_page_serves_swagger_ui(fastapi_server: Served) -> None:
    with fastapi_server.client() as client:
        response = client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()


def test_fastapi_openapi_schema_is_json_listing_the_routes(fastapi_server: Served) -> None:
    with fastapi_server.client() as client:
        response = client.get("/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/items", "/items/{item_id}", "/upload", "/stream"} <= set(schema["paths"])


# -- errors -------------------------------------------------------------------------------------


def test_exception_in_a_route_is_500_and_the_server_keeps_serving(client: httpx.Client) -> None:
    response = client.get("/boom")

    assert response.status_code == 500
    assert client.get("/lifespan").status_code == 200


def test_exception_in_a_route_is_logged_with_its_traceback(
    client: httpx.Client, server: Served
) -> None:
    client.get("/boom")

    assert _poll(lambda: "RuntimeError: boom from /boom" in server.log())
    assert "Traceback (most recent call last)" in server.log()


# -- connection info ----------------------------------------------------------------------------


def test_request_client_host_is_the_loopback_address(client: httpx.Client) -> None:
    response = client.get("/client")

    assert response.status_code == 200
    peer = response.json()
    assert peer["host"] == "127.0.0.1"
    assert isinstance(peer["port"], int)
    assert peer["port"] > 0
