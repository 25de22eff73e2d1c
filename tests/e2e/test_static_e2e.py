"""Static files through the real CLI: ``asgiserve --static DIR`` and ``--mount PREFIX=DIR``,
checked with httpx, curl, raw sockets and headless Chromium."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CLIServer, RawClient, start_cli
from tests.e2e.test_cli import run_cli

DATA = bytes(range(256)) * 400  # 102,400 bytes
CSS = b"body { background: rgb(30, 120, 200); color: white; font: 24px sans-serif; }\n" * 20
SPARSE_SIZE = 200 * 1024 * 1024


def png(width: int, height: int) -> bytes:
    """A small RGB gradient PNG (no imaging library needed)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 160)) for x in range(width))
        for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>loading</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="style.css">
<script src="app.js" defer></script>
</head>
<body>
<h1>asgiserve --static</h1>
<p id="status">JavaScript did not run</p>
<img id="logo" src="logo.png" width="128" height="128" alt="logo">
</body>
</html>
"""

# Every sub-request must have loaded (the Resource Timing entries carry the HTTP status), the
# image decoded and the style sheet applied; the verdict goes into the title (for --dump-dom)
# and onto the page (for the screenshot).
SCRIPT = """
window.addEventListener("load", () => {
  const problems = [];
  const entries = performance.getEntriesByType("resource");
  for (const entry of entries) {
    if (entry.responseStatus !== undefined && entry.responseStatus !== 200) {
      problems.push(entry.name + " " + entry.responseStatus);
    }
  }
  const names = entries.map((entry) => entry.name.split("/").pop()).sort().join(",");
  if (names !== "app.js,logo.png,style.css") problems.push("resources: " + names);
  const logo = document.getElementById("logo");
  if (!logo.complete || logo.naturalWidth !== 64) problems.push("image not decoded");
  const background = getComputedStyle(document.body).backgroundColor;
  if (background !== "rgb(30, 120, 200)") problems.push("style not applied: " + background);
  const verdict = problems.length ? "FAILED " + problems.join("; ") : "OK " + entries.length;
  document.title = verdict;
  document.getElementById("status").textContent =
    problems.length ? verdict : "HTML, CSS, JS and the image all loaded (" + entries.length + " sub-requests)";
});
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("static")
    root = base / "site"
    (root / "page").mkdir(parents=True)
    (root / "page" / "index.html").write_text(PAGE)
    (root / "page" / "style.css").write_bytes(CSS)
    (root / "page" / "app.js").write_text(SCRIPT)
    (root / "page" / "logo.png").write_bytes(png(64, 64))
    (root / "data.bin").write_bytes(DATA)
    (root / "style.css").write_bytes(CSS)
    (root / "style.css.gz").write_bytes(gzip.compress(CSS))
    (root / "<script>.txt").write_text("escaped?")
    (root / ".env").write_text("SECRET=1")
    (root / "inside.bin").symlink_to(root / "data.bin")
    (root / "outside.txt").symlink_to(base / "secret.txt")
    (base / "secret.txt").write_text("TOP SECRET")
    with open(root / "sparse.bin", "wb") as file:
        file.truncate(SPARSE_SIZE)
    return root


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[CLIServer]:
    """``asgiserve --static`` with access logs, shared by the request-level tests."""
    server = start_cli("--static", str(site), "--log-level", "info")
    yield server
    server.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30, check=False
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- the command line ----------------------------------------------------------------------------


def test_static_serves_a_folder_with_a_listing_and_no_app(server: CLIServer) -> None:
    response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert 'href="data.bin"' in response.text
    assert "&lt;script&gt;.txt" in response.text and "<script>.txt" not in response.text
    assert ".env" not in response.text
    assert httpx.get(server.url + "/page/").text == PAGE
    assert httpx.get(server.url + "/page").headers["location"] == "page/"


def test_static_log_line_says_what_runs(server: CLIServer) -> None:
    httpx.get(server.url + "/data.bin")
    time.sleep(0.2)
    assert re.search(r'"GET /data\.bin HTTP/1\.1" 200 102400', server.output())


def test_mount_serves_a_folder_in_front_of_the_app(cli: Any, site: Path) -> None:
    server = cli(
        "tests.apps:app", "--mount", f"/static={site}", "--mount", f"/pages={site / 'page'}"
    )
    assert httpx.get(server.url + "/static/data.bin").content == DATA
    assert httpx.get(server.url + "/pages/").text == PAGE
    # Below the prefix nothing reaches the app: a missing file is the static 404.
    missing = httpx.get(server.url + "/static/scope")
    assert missing.status_code == 404 and missing.text == "Not Found"
    assert httpx.get(server.url + "/").text == "Hello, world!"
    assert httpx.get(server.url + "/scope").json()["path"] == "/scope"


def test_mount_of_a_missing_folder_exits_with_a_message(tmp_path: Path) -> None:
    result = run_cli("tests.apps:app", "--mount", f"/s={tmp_path / 'nope'}", "--port", "0")
    assert result.returncode == 2  # a bad option
    assert "--mount" in result.stderr and "no such folder" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Missing argument 'APP'"),
        (("tests.apps:app", "--static", "."), "give an app or --static"),
        (("tests.apps:app", "--mount", "static=."), "must start with '/'"),
        (("tests.apps:app", "--mount", "/static"), "expected PREFIX=DIR"),
        (("--static", ".", "--static-open-files", "-1"), "--static-open-files must be"),
    ],
)
def test_bad_static_options_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_static_runs_under_workers(cli: Any, site: Path) -> None:
    server = cli("--static", str(site), "--workers", "2")
    for _ in range(4):
        assert httpx.get(server.url + "/data.bin").content == DATA


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_static_open_files_bounds_the_descriptors_kept(cli: Any, site: Path) -> None:
    server = cli("--static", str(site), "--static-open-files", "1")
    for _ in range(2):
        for name in (b"/data.bin", b"/style.css"):
            # No Accept-Encoding (httpx sends one): the server answers these itself.
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % name)
                assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    fds = f"/proc/{server.process.pid}/fd"
    held = []
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # a connection's socket may close meanwhile
            target = os.readlink(f"{fds}/{fd}")
            if str(site) in target:
                held.append(target)
    assert len(held) == 1


def test_follow_symlinks_serves_links_leading_outside(
    cli: Any, site: Path, server: CLIServer
) -> None:
    assert httpx.get(server.url + "/inside.bin").content == DATA
    assert httpx.get(server.url + "/outside.txt").status_code == 404
    relaxed = cli("--static", str(site), "--follow-symlinks")
    assert httpx.get(relaxed.url + "/outside.txt").text == "TOP SECRET"


# -- with curl -------------------------------------------------------------------------------------


def test_curl_single_and_multiple_ranges(server: CLIServer) -> None:
    single = curl("-r", "100-199", server.url + "/data.bin")
    assert single.stdout == DATA[100:200]
    multi = curl("-i", "-r", "0-1,10-11", server.url + "/data.bin")
    assert b"HTTP/1.1 206" in multi.stdout
    assert b"multipart/byteranges; boundary=" in multi.stdout
    assert b"content-range: bytes 10-11/102400" in multi.stdout
    unsatisfiable = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-r", "200000-", server.url + "/data.bin"
    )
    assert unsatisfiable.stdout == b"416"


def test_curl_conditional_requests(server: CLIServer, tmp_path: Path) -> None:
    etag_file = tmp_path / "etag"
    first = curl("-o", "/dev/null", "--etag-save", str(etag_file), server.url + "/data.bin")
    assert first.returncode == 0 and etag_file.read_text().strip().startswith('"')
    again = curl(
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--etag-compare",
        str(etag_file),
        server.url + "/data.bin",
    )
    assert again.stdout == b"304"
    # -z: If-Modified-Since from a date in the future, then from the epoch.
    future = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-z", "Jan 1 2999", server.url + "/data.bin"
    )
    assert future.stdout == b"304"
    past = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-z", "Jan 1 1990", server.url + "/data.bin"
    )
    assert past.stdout == b"200"


def test_curl_head(server: CLIServer) -> None:
    result = curl("-I", server.url + "/data.bin")
    assert result.stdout.startswith(b"HTTP/1.1 200")
    assert b"content-length: 102400\r\n" in result.stdout
    assert b"accept-ranges: bytes\r\n" in result.stdout
    assert result.stdout.endswith(b"\r\n\r\n")


def test_curl_compressed_gets_the_precompressed_sibling(server: CLIServer) -> None:
    result = curl("-i", "--compressed", server.url + "/style.css")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head
    assert b"vary: accept-encoding" in head
    assert body == CSS  # curl decoded it


def test_curl_resumes_a_download(server: CLIServer, tmp_path: Path) -> None:
    partial = tmp_path / "data.bin"
    partial.write_bytes(DATA[:1000])
    result = curl("-C", "-", "-o", str(partial), server.url + "/data.bin")
    assert result.returncode == 0
    assert partial.read_bytes() == DATA


# -- safety, with raw sockets (clients normalise paths) -------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/page/%2e%2e%2f%2e%2e%2fsecret.txt",
        b"/..%5csecret.txt",
        b"/..\\secret.txt",
        b"/%00/x",
        b"//etc/passwd",
        b"/.env",
        b"/outside.txt",
    ],
)
def test_traversal_attempts_are_refused(server: CLIServer, target: bytes) -> None:
    client = RawClient(server.port)
    try:
        client.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = client.recv_until_closed()
    finally:
        client.close()
    assert int(response.split(b" ", 2)[1]) in (400, 404)
    assert b"SECRET" not in response and b"root:" not in response


# -- big files and slow clients -------------------------------------------------------------------


def test_a_file_larger_than_memory_is_streamed(server: CLIServer) -> None:
    pid = server.process.pid
    before = rss_kib(pid)
    peak = before
    received = 0
    with httpx.stream("GET", server.url + "/sparse.bin", timeout=30) as response:
        assert response.headers["content-length"] == str(SPARSE_SIZE)
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
            if received % (16 << 20) < len(chunk):
                peak = max(peak, rss_kib(pid))
    assert received == SPARSE_SIZE
    # sendfile(2): the file never passes through the server's memory.
    assert peak - before < 20 * 1024, (before, peak)


@pytest.mark.parametrize("attempt", ["app", "server"])
def test_a_slow_client_is_flow_controlled(server: CLIServer, attempt: str) -> None:
    # The first plain GET of the file runs the StaticFiles app; later ones are answered by
    # the server itself (the remembered head): both must wait for a slow client.
    pid = server.process.pid
    before = rss_kib(pid)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    slow.connect(("127.0.0.1", server.port))
    try:
        slow.sendall(b"GET /sparse.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        for _ in range(5):
            received += len(slow.recv(65536))
            time.sleep(0.1)
        # The server waits for the client instead of buffering 200 MiB, and serves others.
        assert received < 8 << 20
        started = time.monotonic()
        assert httpx.get(server.url + "/data.bin").content == DATA
        assert time.monotonic() - started < 1.0
        assert rss_kib(pid) - before < 20 * 1024
    finally:
        slow.close()


# -- a browser -------------------------------------------------------------------------------------


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chromium_renders_a_page_served_by_static(site: Path, tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    server = start_cli("--static", str(site), "--log-level", "info")
    try:
        url = server.url + "/page/"
        dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
        title = re.search(r"<title>(.*?)</title>", dom.stdout)
        assert title is not None, dom.stderr[-2000:]
        assert title.group(1) == "OK 3", title.group(1)
        screenshot = tmp_path / "page.png"
        shot = run_chromium(
            binary,
            tmp_path / "profile-shot",
            f"--screenshot={screenshot}",
            "--window-size=800,600",
            "--hide-scrollbars",
            url,
        )
        assert screenshot.exists() and screenshot.stat().st_size > 1000, shot.stderr[-2000:]
        assert screenshot.read_bytes().startswith(b"\x89PNG")
        time.sleep(0.2)
    finally:
        server.stop()
    # The server's own view: every request Chromium made was answered with success.
    requests = re.findall(r'"GET (\S+) HTTP/1\.1" (\d{3})', server.output())
    paths = {path for path, _ in requests}
    assert {"/page/", "/page/style.css", "/page/app.js", "/page/logo.png"} <= paths
    assert all(status in ("200", "304") for _, status in requests), requests


# -- the listing page in a browser (issue 17) -------------------------------------------------------

# name: (size in bytes, modification time): sizes and dates in different orders from names.
LISTED = {
    "beta.txt": (3000, 1_700_000_000),
    "Alpha.txt": (10, 1_400_000_000),
    "gamma.bin": (500_000, 1_500_000_000),
    "<b>odd & name<i>.txt": (42, 1_650_000_000),
}


def png_facts(data: bytes) -> tuple[int, int, tuple[int, int, int]]:
    """Width, height and the top-left pixel's colour of an 8-bit RGB(A) PNG (no imaging
    library): whatever the row's filter (PNG section 9.2), the first pixel of the first row
    is stored as is, since everything it would be predicted from is zero."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    position, idat, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        tag = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if tag == b"IHDR":
            header = body
        elif tag == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    pixels = zlib.decompressobj().decompress(idat, 16)
    red, green, blue = pixels[1:4]
    return width, height, (red, green, blue)


def listed_rows(dom: str) -> list[tuple[str, str]]:
    """(href, text) of each row's link in a dumped listing, in page order."""
    return re.findall(r'<td class="name"><a href="([^"]*)">(.*?)</a>', dom)


def crumbs(dom: str) -> list[tuple[str, str]]:
    heading = re.search(r"<h1>(.*?)</h1>", dom, re.S)
    assert heading is not None, dom[:2000]
    return re.findall(r'<a href="([^"]*)">(.*?)</a>', heading.group(1))


def test_chromium_shows_a_sortable_listing_with_breadcrumbs(tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    root = tmp_path / "served"
    deep = root / "photos" / "2024"
    (deep / "summer").mkdir(parents=True)
    (root / "docs").mkdir()
    for name, (size, mtime) in LISTED.items():
        (deep / name).write_bytes(b"x" * size)
        os.utime(deep / name, (mtime, mtime))
    server = start_cli("--static", str(root))
    try:
        url = server.url + "/photos/2024/"

        def dom_of(target: str, profile: str) -> str:
            result = run_chromium(binary, tmp_path / profile, "--dump-dom", target)
            assert "<table>" in result.stdout, result.stderr[-2000:]
            return result.stdout

        by_name = dom_of(url, "profile-name")
        names = [text for _, text in listed_rows(by_name)]
        # Folders first, then names A to Z whatever their case; the odd name escaped.
        assert names == [
            "../",
            "summer/",
            "&lt;b&gt;odd &amp; name&lt;i&gt;.txt",
            "Alpha.txt",
            "beta.txt",
            "gamma.bin",
        ]
        assert "<b>odd" not in by_name
        # Breadcrumbs: relative links up to each folder above; the current one is not a link.
        trail = crumbs(by_name)
        assert [text for _, text in trail] == ["/", "photos"]
        targets = [httpx.URL(url).join(href) for href, _ in trail]
        assert [str(target) for target in targets] == [server.url + "/", server.url + "/photos/"]
        assert 'aria-current="page">2024</span>' in by_name
        assert 'href="summer/"' in by_name
        # Sorting without JavaScript: the Size heading's link, then the same link again.
        size_link = re.search(r'<th class="size"><a href="([^"]*)"', by_name)
        assert size_link is not None
        by_size_url = str(httpx.URL(url).join(size_link.group(1).replace("&amp;", "&")))
        assert by_size_url.endswith("?sort=size&order=desc")
        by_size = dom_of(by_size_url, "profile-size")
        assert [text for _, text in listed_rows(by_size)][2:] == [
            "gamma.bin",
            "beta.txt",
            "&lt;b&gt;odd &amp; name&lt;i&gt;.txt",
            "Alpha.txt",
        ]
        assert 'aria-sort="descending"' in by_size
        # The sort is kept on the way into a folder and back up.
        assert 'href="summer/?sort=size&amp;order=desc"' in by_size
        by_date = dom_of(url + "?sort=date&order=asc", "profile-date")
        oldest_first = [
            "Alpha.txt",
            "gamma.bin",
            "&lt;b&gt;odd &amp; name&lt;i&gt;.txt",
            "beta.txt",
        ]
        assert [text for _, text in listed_rows(by_date)][2:] == oldest_first
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in by_date
        # Screenshots: a desktop in light and dark, and a phone.
        shots = {}
        for name, size, extra in (
            ("light", "1000,700", ()),
            ("dark", "1000,700", ("--force-dark-mode",)),
            ("phone", "390,760", ()),
        ):
            shot = tmp_path / f"listing-{name}.png"
            result = run_chromium(
                binary,
                tmp_path / f"profile-shot-{name}",
                f"--screenshot={shot}",
                f"--window-size={size}",
                "--hide-scrollbars",
                *extra,
                by_size_url,
            )
            assert shot.exists() and shot.stat().st_size > 1000, result.stderr[-2000:]
            shots[name] = png_facts(shot.read_bytes())
    finally:
        server.stop()
    assert shots["light"][:2] == (1000, 700) and shots["phone"][:2] == (390, 760)
    # prefers-color-scheme: the page background follows the browser's scheme.
    assert sum(shots["light"][2]) > 700, shots["light"]
    assert sum(shots["dark"][2]) < 150, shots["dark"]


# -- the server answers only for what it built (issue 17) --------------------------------------------


def raw_status_and_body(port: int, target: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    client = RawClient(port)
    try:
        client.send(
            b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + extra + b"\r\n"
        )
        response = client.recv_until_closed()
    finally:
        client.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("shape", ["subclass", "wrapper"])
def test_a_password_protected_app_behind_mounts_runs_for_every_request(
    cli: Any, site: Path, shape: str
) -> None:
    server = cli(
        f"tests.e2e.apps.guarded_static:{shape}",
        "--mount",
        f"/assets={site / 'page'}",
        env={"GUARDED_DIR": str(site)},
    )
    for _ in range(3):
        # The authorised request is the kind that gets a file remembered.
        authorised = raw_status_and_body(
            server.port, b"/data.bin", b"Authorization: Bearer letmein\r\n"
        )
        assert authorised == (200, DATA)
        assert raw_status_and_body(server.port, b"/data.bin")[0] == 401
        assert raw_status_and_body(server.port, b"/assets/style.css") == (200, CSS)
