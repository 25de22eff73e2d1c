"""Static files: an ordinary ASGI app that serves a directory.

Theory of operation
-------------------
:class:`StaticFiles` knows nothing about the server it runs on: mount it in Starlette or
FastAPI (``app.mount("/static", StaticFiles("static"))``), run it alone
(``asgiserve --static DIR``), or in front of an app (``asgiserve --mount /static=DIR app:app``).

A request goes through four steps:

1. **The path.** The part of ``scope["path"]`` below ``scope["root_path"]`` (ASGI: ``path``
   includes the root path the app is mounted at; Starlette's ``Mount`` and asgiserve do this)
   is split into segments. A NUL, a backslash or a ``..`` segment refuses the request, and so
   does a dot-segment (a hidden file) unless ``show_hidden``. Percent-decoding was done by the
   server, so ``%2e%2e`` and ``%2f`` arrive here as ``..`` and ``/`` and are caught the same way.
2. **The file.** The segments are looked up one at a time under the (resolved) root with
   ``lstat``. A symbolic link is resolved and must land inside the root, unless
   ``follow_symlinks``. A folder without a trailing slash is redirected to one; a folder is
   served as its ``index.html`` (``html``) or as a listing (``listing``).
3. **The representation.** With ``precompressed``, a sibling ``FILE.br`` or ``FILE.gz`` is
   served instead when the client's ``Accept-Encoding`` prefers it (RFC 9110 section 12.5.3),
   with ``Content-Encoding``; every response of a file with such siblings carries
   ``Vary: Accept-Encoding``, also to a client that sent none. Its ``ETag`` (from modification
   time, size and coding) and ``Last-Modified`` drive the conditional requests of RFC 9110
   section 13 (412, 304) and ``Range``/``If-Range`` of section 14 (206, multipart/byteranges,
   416).
4. **The body.** The file is opened once and everything sent comes from that descriptor:
   with the ``http.response.zerocopysend`` extension the server sends it with ``sendfile(2)``;
   with only ``http.response.pathsend``, the server opens the path itself; otherwise the file
   is read in chunks in a worker thread, so a large file never blocks the event loop nor sits
   in memory.

File-system errors become 403 (permission) or 404 (anything else), never a traceback.

The common case, a GET with none of the conditional or range headers, has a shortcut: the
response head of each representation served that way (the file itself, its ``.br``, its
``.gz``) is remembered, keyed by route and coding, with the identity (device, inode, size,
modification and change times) of the file sent and of every folder on its way. A later such
request picks its representation with the same Accept-Encoding rule among the codings the route
had (the choice is kept per Accept-Encoding value: browsers send the same one each time), then
checks the identities: only an exact match reuses the head, anything else forgets the route and
takes the four steps.

Why that admits nothing the full lookup would refuse: routes whose lookup met a symbolic link
(the file, a folder, a sibling) are never remembered, unless ``follow_symlinks``, where links are
served anyway and identities are taken through them. A folder's identity is taken by the lookup's
own ``lstat``, so a folder later moved away and replaced by a link (or by another folder) no
longer matches; the last place is opened with ``O_NOFOLLOW``. The file's identity admits only
that very file, unchanged (any write moves its times; renaming or linking it moves its change
time, which no caller can set). Adding, removing or renaming a sibling moves the folder's times,
so the codings a remembered representation was chosen among are still those on disk. (One limit
shared with every cache keyed on times: two changes within one tick of the file system's clock
may look like one.) That shortcut is :meth:`StaticFiles.open_remembered`.

A server that built this app itself (asgiserve with ``--static``, ``--mount``) answers such a
request (and a browser's revalidation of it, with a 304 when the validators still match)
without running the app, through :meth:`StaticFiles.borrow_remembered`: the same checks,
made with one ``lstat`` of the remembered path and one per folder, against a descriptor the app
keeps open for the file. Opening, checking and closing a file per request cost more than the
rest of the server's answer (measured: a third of the request's CPU). The kept descriptor pins
the inode, so its number cannot be reused while we hold it: a path whose ``lstat`` shows that
device, inode, size and times still names that file, unchanged. At most ``open_files``
files are kept open (``--static-open-files``, default :data:`OPEN_REMEMBERED`); a forgotten
file's descriptor is closed with it. The server only ever does this for the objects it built
(:func:`asgiserve.apps.mounts.served_files`), never for a user's app or a subclass.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import Callable, Iterable
from email.utils import formatdate, mktime_tz, parsedate_tz
from mimetypes import guess_type
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from asgiserve.apps.listing import Entry, render_listing, sort_from_query

if TYPE_CHECKING:
    from asgiserve.asgi.types import Message, Receive, Scope, Send

__all__ = ["OPEN_REMEMBERED", "NotModified", "RememberedFile", "StaticFiles", "not_modified"]

#: Bytes per read when the server offers no file extension.
CHUNK_SIZE = 256 * 1024
#: More ranges than this in one request are ignored (the whole file is sent): a guard against
#: requests for many tiny ranges (RFC 9110 section 14.2 allows ignoring them).
MAX_RANGES = 64

_ALLOW = b"GET, HEAD"
#: Routes whose response heads are remembered (see the module docstring), up to three
#: representations each; the oldest is forgotten first.
REMEMBERED_FILES = 1024
#: The default of ``open_files``: remembered files that also keep a descriptor open for the
#: server (borrow_remembered); the one opened first is closed first. Small next to the usual
#: limit of 1024 descriptors.
OPEN_REMEMBERED = 64
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
# Segments that start with a dot are hidden, except RFC 8615's well-known URIs, which exist to
# be served.
_NOT_HIDDEN = frozenset({".well-known"})
# Request headers of conditional and range requests (RFC 9110 sections 13 and 14): a request
# with one of them is never answered from a remembered file.
_CONDITIONAL_HEADERS = frozenset(
    {
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"range",
        b"if-range",
    }
)
# Request headers the conditional, range and coding logic reads; list-valued ones are joined.
_WANTED_HEADERS = _CONDITIONAL_HEADERS | {b"accept-encoding"}
#: Accept-Encoding values whose choice among a route's codings is kept (browsers send a handful
#: of distinct values; the dict is emptied when full, so a client cannot make it grow).
_CHOICES = 256
# Precompressed siblings, in our order of preference when the client likes them equally.
_CODINGS = (("br", ".br"), ("gzip", ".gz"))

# Types the mimetypes module (or the system's mime.types) gets wrong, lacks, or gets from the
# last suffix as an *encoding* (.gz, .br), which must not become a Content-Encoding here.
_TYPES: dict[str, str] = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".br": "application/x-brotli",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".zst": "application/zstd",
}
_DEFAULT_TYPE = "application/octet-stream"


class _Refused(Exception):
    """The request gets an error status instead of a file."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


#: The representation chosen for a request, opened for GET (fd -1 for HEAD): path, fd,
#: stat, content coding, the request headers that matter, the response headers so far.
_Headers = list[tuple[bytes, bytes]]
_Plan = tuple[
    str, int, os.stat_result, "str | None", dict[bytes, bytes], _Headers, "_Remember | None"
]
#: What identifies a file's content, from its stat: inode, device, size, mtime, ctime (ns).
_Identity = tuple[int, int, int, int, int]
#: Paths with their identities: the folders a remembered file was found through (see
#: _RememberedRoute), or those and the file.
_Paths = tuple[tuple[str, _Identity], ...]
#: What _respond needs to remember a 200: the route, the folders on its way, the codings found.
_Remember = tuple[str, _Paths, tuple[str, ...]]


class NotModified:
    """The 304 of a remembered representation, for a server that answers a revalidation
    itself (:meth:`StaticFiles.borrow_remembered`): the headers :meth:`StaticFiles._respond`
    gives a 304 of that representation (:func:`_not_modified_headers`), and no body."""

    __slots__ = ("encoded_headers", "headers")

    #: What the server reads (transport/state.py, ``FileAnswer``): no body, no descriptor.
    status = 304
    fd = -1
    size = 0

    def __init__(self, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.headers = headers
        #: Free for the server that answers from this entry (made on its first use there).
        self.encoded_headers: bytes | None = None


class RememberedFile:
    """A remembered representation (see the module docstring): the path and identity of the
    file sent, of the folders it was found through, the 200 response headers, the validators
    a revalidation is compared with, and its 304; while a server answers from it, an open
    descriptor and those headers in the server's wire form."""

    __slots__ = (
        "checks",
        "encoded_headers",
        "etag",
        "fd",
        "folders",
        "headers",
        "identity",
        "modified",
        "not_modified",
        "path",
        "size",
    )

    #: A 200 whose body is the file (transport/state.py, ``FileAnswer``).
    status = 200

    def __init__(
        self,
        path: str,
        identity: _Identity,
        headers: tuple[tuple[bytes, bytes], ...],
        folders: _Paths,
        not_modified: tuple[tuple[bytes, bytes], ...],
        etag: bytes,
        modified: int,
    ) -> None:
        self.path = path
        self.identity = identity
        self.headers = headers
        self.folders = folders
        #: What borrow_remembered checks: the file, then its folders.
        self.checks = ((path, identity), *folders)
        self.size = identity[2]
        #: The ETag and Last-Modified (as a Unix time) of the 200, which the preconditions
        #: of a revalidation are evaluated against (RFC 9110 section 13.2.2).
        self.etag = etag
        self.modified = modified
        self.not_modified = NotModified(not_modified)
        #: Kept open for :meth:`StaticFiles.borrow_remembered`; -1 when not.
        self.fd = -1
        #: Free for the server that answers from this entry (made on its first use there).
        self.encoded_headers: bytes | None = None


class _RememberedRoute:
    """What is remembered of one route: the precompressed codings its file had (RFC 9110
    section 12.5.3's choice is made among them, as the full lookup makes it) and a
    :class:`RememberedFile` per representation served so far (key None: the file itself).

    The codings depend on which siblings the folder holds; every representation's folders
    include the file's own folder with its modification and change times, which move when a
    name in it is added, removed or renamed, so a representation that is still valid was
    remembered with the siblings that are there now."""

    __slots__ = ("codings", "files")

    def __init__(self, codings: tuple[str, ...]) -> None:
        self.codings = codings
        self.files: dict[str | None, RememberedFile] = {}


class _HeaderScan:
    """What :meth:`StaticFiles._remembered_for` found in a request's headers, with a copy of
    them: a client repeats its headers, and a list equal to that copy holds the same."""

    __slots__ = ("accept", "headers", "modified_since", "none_match", "refused")

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]] | None,
        refused: bool,
        accept: bytes | None,
        none_match: bytes | None,
        modified_since: bytes | None,
    ) -> None:
        #: None: headers that could change (lists, bytearrays), not to be kept.
        self.headers = headers
        #: A conditional or range header other than a browser's revalidation is present.
        self.refused = refused
        self.accept = accept
        self.none_match = none_match
        self.modified_since = modified_since


def _scan_headers(request_headers: Iterable[tuple[bytes, bytes]]) -> _HeaderScan:
    """Accept-Encoding, If-None-Match and If-Modified-Since of a request (repeated fields
    joined, as :meth:`StaticFiles.__call__` joins them), and whether it has another of the
    conditional or range headers."""
    own: list[Any] = list(request_headers)
    accept: bytes | None = None
    none_match: bytes | None = None
    modified_since: bytes | None = None
    refused = False
    plain = True
    for pair in own:
        key, value = pair
        if type(pair) is not tuple or type(key) is not bytes or type(value) is not bytes:
            # A scope changed by middleware may hold lists or bytearrays, which can change:
            # such headers are read every time, not kept.
            plain = False
        if key in _CONDITIONAL_HEADERS:
            if key == b"if-none-match":
                none_match = value if none_match is None else none_match + b", " + value
            elif key == b"if-modified-since":
                modified_since = value if modified_since is None else modified_since + b", " + value
            else:
                refused = True  # If-Match, If-Unmodified-Since, Range, If-Range
        elif key == b"accept-encoding":
            accept = value if accept is None else accept + b", " + value
    return _HeaderScan(own if plain else None, refused, accept, none_match, modified_since)


def _let_go(known: RememberedFile) -> None:
    """Close the descriptor a remembered file keeps (see StaticFiles.borrow_remembered)."""
    os.close(known.fd)
    known.fd = -1


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _status_for(exc: OSError) -> int:
    return 403 if isinstance(exc, PermissionError) else 404


class StaticFiles:
    """Serve the files under ``directory``.

    :param html: serve ``index.html`` for a folder, and ``404.html`` (from the root) with
        404 responses when there is one.
    :param listing: serve an HTML listing for folders without ``index.html``.
    :param follow_symlinks: serve symbolic links that point outside the directory.
    :param show_hidden: serve (and list) files and folders whose name starts with a dot.
    :param cache_control: the ``Cache-Control`` of files (None: no header). The default makes
        browsers revalidate each time, which the ETag turns into a cheap 304.
    :param precompressed: serve ``FILE.br``/``FILE.gz`` when the client accepts them.
    :param check_dir: raise at construction if ``directory`` is not a folder.
    :param open_files: how many remembered files keep a descriptor open for
        :meth:`borrow_remembered` (0: none, and it always answers None).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        html: bool = True,
        listing: bool = False,
        follow_symlinks: bool = False,
        show_hidden: bool = False,
        cache_control: str | None = "no-cache",
        precompressed: bool = True,
        index: str = "index.html",
        check_dir: bool = True,
        open_files: int = OPEN_REMEMBERED,
    ) -> None:
        self.directory = os.fspath(directory)
        # Resolved once: every path served must be below this one.
        self.root = os.path.realpath(self.directory)
        if check_dir and not os.path.isdir(self.root):
            raise NotADirectoryError(f"{self.directory!r} is not a directory")
        self.html = html
        self.listing = listing
        self.follow_symlinks = follow_symlinks
        self.show_hidden = show_hidden
        self.cache_control = None if cache_control is None else cache_control.encode("latin-1")
        self.precompressed = precompressed
        self.index = index
        # O_NONBLOCK: a FIFO swapped in after the lstat must not block the event loop on open
        # (it is harmless for regular files). O_NOFOLLOW: the path was resolved, so a symlink
        # there appeared since; refuse it.
        self._open_flags = _OPEN_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
        self._types: dict[str, bytes] = {}
        self._dates: dict[int, bytes] = {}
        self.open_files = open_files
        self._known: dict[str, _RememberedRoute] = {}
        #: The remembered files holding a descriptor, oldest first (at most ``open_files``).
        self._held: dict[RememberedFile, None] = {}
        self._choices: dict[tuple[bytes | None, tuple[str, ...]], str | None] = {}
        #: The last request headers _remembered_for read, and what it found in them.
        self._last_scan = _HeaderScan([], False, None, None, None)
        # How a remembered path is checked: as the full lookup sees it (links not followed,
        # unless follow_symlinks, where the identity is the link's target's).
        self._stat: Callable[[str], os.stat_result] = os.stat if follow_symlinks else os.lstat

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = route_path(scope)
            if scope["method"] == "GET":
                ready = self.open_remembered(route, scope["headers"])
                if ready is not None:
                    fd, known = ready
                    headers, size = known.headers, known.size
                    try:
                        # A copy: whoever handles the message may change its list
                        # (Starlette's MutableHeaders does, in middleware).
                        await send(
                            {"type": "http.response.start", "status": 200, "headers": [*headers]}
                        )
                        await self._body(
                            scope, send, known.path, fd, 0, size, more_body=False, whole=True
                        )
                    finally:
                        os.close(fd)
                    return
            request: dict[bytes, bytes] = {}
            for key, value in scope["headers"]:
                if key in _WANTED_HEADERS:
                    seen = request.get(key)
                    request[key] = value if seen is None else seen + b", " + value
            await self._http(scope, send, route, request)
        elif kind == "websocket":
            # Closing before accepting is a 403 to the client (ASGI WebSocket spec).
            await send({"type": "websocket.close", "code": 1008})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def open_remembered(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, RememberedFile] | None:
        """The shortcut of a plain GET (see the module docstring): for a remembered ``route``
        still naming the same file through the same folders, and request headers with nothing
        conditional or ranged, the opened file (the caller closes it) and the remembered
        representation the request's ``Accept-Encoding`` chooses; None for everything else,
        which the full lookup serves."""
        found = self._remembered_for(route, request_headers)
        if found is None or found[1] is not None or found[2] is not None:
            return None  # a revalidation: the full lookup answers it
        known = found[0]
        # The file itself is checked on the descriptor (_open_known).
        if not self._unchanged(known.folders):
            self._forget(route)
            return None
        fd = self._open_known(route, known)
        if fd < 0:
            return None
        return fd, known

    def borrow_remembered(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> RememberedFile | NotModified | None:
        """:meth:`open_remembered` for a server that answers the request itself, without
        running this app: the remembered file, whose ``fd`` stays this app's. It is valid
        until the next call into this app, which may close it (``fd`` is then -1): read
        ``fd`` again before each use, or ``os.dup`` it to keep it.

        A browser's revalidation (``If-None-Match``, ``If-Modified-Since``) of a remembered
        representation gets its :class:`NotModified` when :meth:`_respond` would answer 304
        (:func:`not_modified`, RFC 9110 section 13.2.2), else the file as for a plain GET
        (what the full lookup sends then). Any other precondition or a range gets None.

        Blocking calls on the event loop: one ``lstat`` of a local file and one per folder on
        its way (and, the first time a 200 is answered, an open and ``fstat``); the bytes are
        sent by the server, never read here.
        """
        found = self._remembered_for(route, request_headers)
        if found is None:
            return None
        known, none_match, modified_since = found
        if not self._unchanged(known.checks):
            self._forget(route)
            return None
        if (none_match is not None or modified_since is not None) and not_modified(
            none_match, modified_since, known.etag, known.modified
        ):
            return known.not_modified
        if known.fd < 0:
            held = self._held
            if len(held) >= self.open_files:
                if not held:
                    return None  # open_files=0: the app answers, opening the file each time
                oldest = next(iter(held))
                del held[oldest]
                _let_go(oldest)
            fd = self._open_known(route, known)
            if fd < 0:
                return None
            known.fd = fd
            held[known] = None
        return known

    def _remembered_for(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[RememberedFile, bytes | None, bytes | None] | None:
        """The remembered representation of ``route`` that the request's Accept-Encoding
        chooses, with the request's ``If-None-Match`` and ``If-Modified-Since`` (None when
        absent; repeated fields joined, as :meth:`__call__` joins them); None if there is none
        or the request has another of the conditional or range headers."""
        entry = self._known.get(route)
        if entry is None:
            return None
        scan = self._last_scan
        if request_headers != scan.headers:
            scan = _scan_headers(request_headers)
            if scan.headers is not None:
                self._last_scan = scan
        if scan.refused:
            return None
        codings = entry.codings
        known = entry.files.get(self._coding_for(scan.accept, codings) if codings else None)
        if known is None:
            return None
        return known, scan.none_match, scan.modified_since

    def _coding_for(self, accept_encoding: bytes | None, codings: tuple[str, ...]) -> str | None:
        """:func:`choose_coding`, kept per (Accept-Encoding, codings)."""
        key = (accept_encoding, codings)
        choices = self._choices
        try:
            return choices[key]
        except KeyError:
            if len(choices) >= _CHOICES:
                choices.clear()
            chosen = choices[key] = choose_coding(accept_encoding, list(codings))
            return chosen

    def _unchanged(self, paths: _Paths) -> bool:
        """Whether each path still has its identity, as the full lookup sees it (a folder moved
        away and replaced by a symbolic link, a sibling added, a file changed: all differ)."""
        stat_of = self._stat
        try:
            for path, identity in paths:
                info = stat_of(path)
                if _identity(info) != identity:
                    return False
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the descriptors kept for :meth:`borrow_remembered` (also done at lifespan
        shutdown); they are opened again as needed."""
        for known in self._held:
            _let_go(known)
        self._held.clear()

    def _open_known(self, route: str, known: RememberedFile) -> int:
        """The remembered file opened, if it is still the same file; -1 (and it is forgotten)
        if not.

        Blocking calls on the event loop: one open and one fstat of a local file (the full
        lookup makes three such calls); the bytes are sent by the server (sendfile) or read in
        a worker thread, never here.
        """
        try:
            fd = os.open(known.path, self._open_flags)
        except OSError:
            self._forget(route)
            return -1
        try:
            info = os.fstat(fd)
        except OSError:
            info = None
        # The same inode is the same kind of file: a regular one, as when it was remembered.
        if info is None or _identity(info) != known.identity:
            os.close(fd)
            self._forget(route)
            return -1
        return fd

    def _remember(
        self,
        remember: _Remember,
        coding: str | None,
        path: str,
        info: os.stat_result,
        headers: _Headers,
        not_modified_headers: tuple[tuple[bytes, bytes], ...],
        etag: bytes,
    ) -> None:
        route, folders, codings = remember
        known = self._known
        entry = known.get(route)
        if entry is not None and entry.codings != codings:
            self._forget(route)  # the siblings changed: what was remembered is stale
            entry = None
        if entry is None:
            if len(known) >= REMEMBERED_FILES:
                self._forget(next(iter(known)))
            entry = known[route] = _RememberedRoute(codings)
        else:
            previous = entry.files.get(coding)
            if previous is not None and previous.fd >= 0:
                del self._held[previous]
                _let_go(previous)
        entry.files[coding] = RememberedFile(
            path,
            _identity(info),
            tuple(headers),
            folders,
            not_modified_headers,
            etag,
            int(info.st_mtime),
        )

    def _forget(self, route: str) -> None:
        entry = self._known.pop(route, None)
        if entry is None:
            return
        for known in entry.files.values():
            if known.fd >= 0:
                del self._held[known]
                _let_go(known)

    async def _http(
        self, scope: Scope, send: Send, route: str, request: dict[bytes, bytes]
    ) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            # RFC 9110 section 15.5.6: 405 lists the methods the resource supports.
            await _simple(send, 405, b"Method Not Allowed", [(b"allow", _ALLOW)], method)
            return
        # Only this synchronous part (path checks, lookups, open) can fail into an error
        # response: once a response has started, a failure is the server's to handle.
        plan: _Plan | None = None
        try:
            parts = self._segments(route)
            parent, path, info, folders = self._lookup(parts)
            if stat.S_ISDIR(info.st_mode):
                if route.endswith("/"):  # else: redirected below
                    index = self._child(path, self.index) if self.html else None
                    if index is not None and stat.S_ISREG(index[1].st_mode):
                        plan = self._plan(
                            scope, request, path, index[0], self.index, index[1], None
                        )
                    elif not self.listing:
                        raise _Refused(404)
            elif stat.S_ISREG(info.st_mode) and not route.endswith("/"):
                remember: _Remember | None = None
                if (
                    folders is not None
                    and method == "GET"
                    and _CONDITIONAL_HEADERS.isdisjoint(request)
                ):
                    # Taken before the siblings are looked for (in _plan): one added after
                    # this moves the folder's times, and the representation is forgotten.
                    remember = (route, folders or self._folder_identities(parts), ())
                plan = self._plan(scope, request, parent, path, parts[-1], info, remember)
            else:
                raise _Refused(404)
        except _Refused as exc:
            await self._error(scope, send, exc.status)
            return
        except OSError as exc:
            await self._error(scope, send, _status_for(exc))
            return
        if plan is not None:
            try:
                await self._respond(scope, send, *plan)
            finally:
                if plan[1] >= 0:
                    os.close(plan[1])
        elif not route.endswith("/"):
            await self._redirect_to_folder(scope, send)
        else:
            await self._listing(scope, send, path, route)

    # -- paths ---------------------------------------------------------------------------------

    def _segments(self, route: str) -> list[str]:
        if "\x00" in route or "\\" in route:
            raise _Refused(404)
        parts = []
        for part in route.split("/"):
            if not part or part == ".":
                continue
            if part == "..":
                raise _Refused(404)
            if part[0] == "." and not self.show_hidden and part not in _NOT_HIDDEN:
                raise _Refused(404)
            parts.append(part)
        return parts

    def _lookup(self, parts: list[str]) -> tuple[str, str, os.stat_result, _Paths | None]:
        """(resolved parent folder, resolved path, stat, folders) of the segments under the
        root (with ``follow_symlinks``, links are not looked at). ``folders``: the identity of
        each folder on the way below the root, as seen by this lookup; None when a symbolic
        link was met (such a route is never remembered: the link may be changed to point
        elsewhere); empty for a file in the root and with ``follow_symlinks``, where the
        caller takes them (_folder_identities)."""
        root = self.root
        if not parts:
            return root, root, os.stat(root), None
        if self.follow_symlinks:
            # No segment is empty, "." or ".." and none holds a slash: the join stays below.
            path = os.path.join(root, *parts)
            return os.path.dirname(path), path, os.stat(path), ()
        parent = path = root
        last = len(parts) - 1
        plain = True
        folders: list[tuple[str, _Identity]] = []
        for i, part in enumerate(parts):
            parent = path
            path = (parent if parent != "/" else "") + "/" + part
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                path = self._inside(path)
                info = os.stat(path)
                plain = False
            if i < last:
                if not stat.S_ISDIR(info.st_mode):
                    raise _Refused(404)
                # This lstat's view, not a later one: a folder swapped for a link after it
                # must differ from what is remembered.
                folders.append((path, _identity(info)))
        return parent, path, info, tuple(folders) if plain else None

    def _folder_identities(self, parts: list[str]) -> _Paths:
        """The folders on the way to ``parts`` (the root for a file in it), as a remembered
        file's check sees them (:attr:`_stat`)."""
        if len(parts) == 1:
            return ((self.root, _identity(self._stat(self.root))),)
        folders = []
        path = self.root
        for part in parts[:-1]:
            path = (path if path != "/" else "") + "/" + part
            folders.append((path, _identity(self._stat(path))))
        return tuple(folders)

    def _inside(self, link: str) -> str:
        """The target of a symbolic link, if it stays under the root."""
        target = os.path.realpath(link)
        root = self.root
        if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
            raise _Refused(404)
        return target

    def _child(self, folder: str, name: str) -> tuple[str, os.stat_result, bool] | None:
        """A file in an already resolved folder, with the same symlink rule, and whether it
        is a symbolic link; None if absent."""
        path = (folder if folder != "/" else "") + "/" + name
        try:
            info = os.lstat(path)
            linked = stat.S_ISLNK(info.st_mode)
            if linked:
                if not self.follow_symlinks:
                    path = self._inside(path)
                info = os.stat(path)
        except (OSError, _Refused):
            return None
        return path, info, linked

    async def _redirect_to_folder(self, scope: Scope, send: Send) -> None:
        # A relative reference (RFC 9110 section 10.2.2, RFC 3986 section 5.2) to the last
        # segment plus a slash is right whatever prefix a proxy or a mount added or removed.
        full: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and not full.startswith(root_path):
            full = root_path + full  # the older convention: path below root_path
        last = full.rsplit("/", 1)[-1]
        location = quote(last) + "/" if last else "./"
        query = scope.get("query_string", b"")
        target = location.encode("ascii") + (b"?" + query if query else b"")
        await _simple(send, 301, b"", [(b"location", target)], scope["method"])

    # -- files ---------------------------------------------------------------------------------

    def _plan(
        self,
        scope: Scope,
        request: dict[bytes, bytes],
        folder: str,
        path: str,
        name: str,
        info: os.stat_result,
        remember: _Remember | None,
    ) -> _Plan:
        """Pick the representation and open it (synchronous: errors become 403/404)."""
        headers: list[tuple[bytes, bytes]] = [(b"content-type", self._content_type(name))]
        coding = None
        if self.precompressed:
            # Looked for even when the client sent no Accept-Encoding: the response still
            # needs Vary, or a shared cache could hand it to a client that wants gzip.
            variants = []
            for candidate, suffix in _CODINGS:
                found = self._child(folder, name + suffix)
                if found is not None and stat.S_ISREG(found[1].st_mode):
                    variants.append((candidate, found))
            if variants:
                # Caches must key this resource on Accept-Encoding (RFC 9110 section 12.5.5),
                # whichever representation this request gets.
                headers.append((b"vary", b"accept-encoding"))
                codings = tuple(c for c, _ in variants)
                coding = choose_coding(request.get(b"accept-encoding"), list(codings))
                if coding is not None:
                    path, info, _ = next(found for c, found in variants if c == coding)
                    headers.append((b"content-encoding", coding.encode("ascii")))
                if remember is not None:
                    # A sibling through a link may be changed to point elsewhere unseen.
                    linked = any(found[2] for _, found in variants)
                    remember = None if linked else (remember[0], remember[1], codings)
        fd = -1
        if scope["method"] == "GET":
            # Everything sent comes from the open file, so the metadata and the bytes agree
            # even if the file is replaced meanwhile.
            fd = self._open(path)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise _Refused(404)
            except BaseException:
                os.close(fd)
                raise
        return path, fd, info, coding, request, headers, remember

    def _open(self, path: str) -> int:
        return os.open(path, self._open_flags)

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        path: str,
        fd: int,
        info: os.stat_result,
        coding: str | None,
        request: dict[bytes, bytes],
        headers: list[tuple[bytes, bytes]],
        remember: _Remember | None,
    ) -> None:
        size = info.st_size
        modified = int(info.st_mtime)
        etag = b'"%x-%x%s"' % (
            info.st_mtime_ns,
            size,
            b"" if coding is None else b"-" + coding.encode("ascii"),
        )
        last_modified = self._http_date(modified)
        validators = [(b"etag", etag)]
        if self.cache_control is not None:
            validators.append((b"cache-control", self.cache_control))
        method = scope["method"]
        status = evaluate_preconditions(request, etag, modified) if request else 200
        if status == 304:
            await _send_empty(send, 304, [*_not_modified_headers(headers, validators)])
            return
        if status == 412:
            await _simple(send, 412, b"Precondition Failed", [], method)
            return
        headers += validators
        headers += ((b"last-modified", last_modified), (b"accept-ranges", b"bytes"))
        ranges = None
        range_header = request.get(b"range")
        # RFC 9110 section 14.2: Range is defined for GET only; If-Range (section 13.1.5)
        # makes it conditional on the validator the client holds.
        if (
            range_header is not None
            and method == "GET"
            and if_range_holds(request.get(b"if-range"), etag, modified)
        ):
            ranges = parse_ranges(range_header, size)
        if ranges is None:
            headers.append((b"content-length", b"%d" % size))
            if remember is not None and fd >= 0:
                self._remember(
                    remember,
                    coding,
                    path,
                    info,
                    headers,
                    _not_modified_headers(headers, validators),
                    etag,
                )
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._body(scope, send, path, fd, 0, size, more_body=False, whole=True)
            return
        if not ranges:
            # RFC 9110 section 15.5.17: none of the ranges overlaps the file.
            body = b"Range Not Satisfiable"
            await send(
                {
                    "type": "http.response.start",
                    "status": 416,
                    "headers": [
                        (b"content-range", b"bytes */%d" % size),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if len(ranges) == 1:
            start, end = ranges[0]
            headers.append((b"content-range", b"bytes %d-%d/%d" % (start, end, size)))
            headers.append((b"content-length", b"%d" % (end - start + 1)))
            await send({"type": "http.response.start", "status": 206, "headers": headers})
            await self._body(scope, send, path, fd, start, end - start + 1, more_body=False)
            return
        await self._multipart(scope, send, headers, path, fd, size, ranges)

    async def _multipart(
        self,
        scope: Scope,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        path: str,
        fd: int,
        size: int,
        ranges: list[tuple[int, int]],
    ) -> None:
        # RFC 9110 section 14.6: each part carries its own Content-Type and Content-Range.
        boundary = uuid.uuid4().hex.encode("ascii")
        content_type = headers[0][1]
        heads = [
            b"--%s\r\ncontent-type: %s\r\ncontent-range: bytes %d-%d/%d\r\n\r\n"
            % (boundary, content_type, start, end, size)
            for start, end in ranges
        ]
        closing = b"\r\n--%s--\r\n" % boundary
        length = sum(len(head) for head in heads) + 2 * (len(ranges) - 1) + len(closing)
        length += sum(end - start + 1 for start, end in ranges)
        headers = [
            (b"content-type", b"multipart/byteranges; boundary=" + boundary),
            *[(k, v) for k, v in headers if k not in (b"content-type", b"accept-ranges")],
            (b"content-length", b"%d" % length),
        ]
        await send({"type": "http.response.start", "status": 206, "headers": headers})
        for i, ((start, end), head) in enumerate(zip(ranges, heads, strict=True)):
            separator = b"\r\n" if i else b""
            await send({"type": "http.response.body", "body": separator + head, "more_body": True})
            await self._body(scope, send, path, fd, start, end - start + 1, more_body=True)
        await send({"type": "http.response.body", "body": closing})

    async def _body(
        self,
        scope: Scope,
        send: Send,
        path: str,
        fd: int,
        offset: int,
        count: int,
        *,
        more_body: bool,
        whole: bool = False,
    ) -> None:
        if fd < 0:  # HEAD: the server drops the body anyway
            await send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        extensions = scope.get("extensions") or {}
        if "http.response.zerocopysend" in extensions:
            message: Message = {
                "type": "http.response.zerocopysend",
                "file": fd,
                "offset": offset,
                "count": count,
                "more_body": more_body,
            }
            await send(message)
            return
        if whole and "http.response.pathsend" in extensions:
            await send({"type": "http.response.pathsend", "path": path})
            return
        loop = asyncio.get_running_loop()
        while True:
            size = min(count, CHUNK_SIZE)
            data = await loop.run_in_executor(None, os.pread, fd, size, offset) if size else b""
            if len(data) < size:
                # The file shrank after we announced its length: the response cannot be
                # completed correctly, so fail it (the server aborts the connection).
                raise RuntimeError(f"{path}: file ended {count - len(data)} bytes early")
            offset += size
            count -= size
            await send(
                {"type": "http.response.body", "body": data, "more_body": more_body or count > 0}
            )
            if not count:
                return

    def _content_type(self, name: str) -> bytes:
        dot = name.rfind(".")
        suffix = name[dot:].lower() if dot > 0 else ""  # ".profile" has no suffix
        cached = self._types.get(suffix)
        if cached is None:
            media_type = _TYPES.get(suffix) or guess_type("x" + suffix)[0] or _DEFAULT_TYPE
            if media_type.startswith("text/"):
                media_type += "; charset=utf-8"
            cached = self._types[suffix] = media_type.encode("latin-1")
        return cached

    def _http_date(self, seconds: int) -> bytes:
        cached = self._dates.get(seconds)
        if cached is None:
            if len(self._dates) > 4096:
                self._dates.clear()
            cached = self._dates[seconds] = formatdate(seconds, usegmt=True).encode("ascii")
        return cached

    # -- listings and errors -------------------------------------------------------------------

    async def _listing(self, scope: Scope, send: Send, folder: str, route: str) -> None:
        # The URL's own segments (not the looked-up ones): the page's relative links go up
        # as many levels as the browser's URL has.
        segments = route[1:-1].split("/") if len(route) > 1 else []
        page = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: render_listing(
                self._entries(folder),
                base=scope.get("root_path", ""),
                segments=segments,
                sort=sort_from_query(scope.get("query_string", b"")),
            ),
        )
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", b"%d" % len(page)),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": page if scope["method"] == "GET" else b""}
        )

    def _entries(self, folder: str) -> Iterable[Entry]:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == "." and not self.show_hidden and name not in _NOT_HIDDEN:
                        continue
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue  # not valid UTF-8: no request path can name it
                    try:
                        if entry.is_symlink() and not self.follow_symlinks:
                            self._inside(entry.path)
                        info = entry.stat()
                    except (OSError, _Refused):
                        continue  # dangling, unreadable, or pointing outside: not served
                    is_dir = stat.S_ISDIR(info.st_mode)
                    if is_dir or stat.S_ISREG(info.st_mode):
                        yield name, is_dir, info.st_size, info.st_mtime
        except OSError:
            return

    async def _error(self, scope: Scope, send: Send, status: int) -> None:
        if status == 404 and self.html:
            page = self._child(self.root, "404.html")
            if page is not None and stat.S_ISREG(page[1].st_mode):
                try:
                    body = await asyncio.get_running_loop().run_in_executor(
                        None, _read_small, page[0]
                    )
                except OSError:
                    pass
                else:
                    headers = [(b"content-type", b"text/html; charset=utf-8")]
                    await _simple(send, 404, body, headers, scope["method"])
                    return
        reason = {403: b"Forbidden", 404: b"Not Found"}.get(status, b"Error")
        await _simple(send, status, reason, [], scope["method"])


# -- helpers (pure functions, tested directly) ---------------------------------------------------


def route_path(scope: Scope) -> str:
    """The request path below the mount point.

    ASGI (since 2024, and Starlette's ``Mount``): ``path`` includes ``root_path``. A path
    that does not start with it comes from a server following the older convention, where
    ``path`` is already relative.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest[0] == "/":
            return rest
    return path


def choose_coding(accept_encoding: bytes | None, available: list[str]) -> str | None:
    """The content coding to serve among ``available`` (in our order of preference), or None
    for the file itself, by the q-values of ``Accept-Encoding`` (RFC 9110 section 12.5.3)."""
    if not accept_encoding:
        # No Accept-Encoding means any coding would do (RFC 9110 section 12.5.3), but in
        # practice such clients (curl, scripts) want the bytes as stored.
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(b","):
        token, _, params = item.partition(b";")
        coding = token.strip().lower().decode("latin-1")
        if not coding:
            continue
        weight = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    weight = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        if coding == "x-gzip":  # RFC 9110 section 8.4.1.3
            coding = "gzip"
        weights[coding] = weight
    star = weights.get("*")
    # Identity is acceptable unless excluded; when it is not named it ranks below any coding
    # the client named.
    best: str | None = None
    best_weight = weights.get("identity", star if star is not None else 0.001)
    for coding in available:
        weight = weights.get(coding, star if star is not None else 0.0)
        if weight > 0 and weight >= best_weight and (best is None or weight > best_weight):
            best, best_weight = coding, weight
    return best


def evaluate_preconditions(request: dict[bytes, bytes], etag: bytes, modified: int) -> int:
    """RFC 9110 section 13.2.2, for GET/HEAD: 412, 304, or 200 (go on)."""
    if_match = request.get(b"if-match")
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            return 412
    else:
        since = _parse_date(request.get(b"if-unmodified-since"))
        if since is not None and modified > since:
            return 412
    if not_modified(
        request.get(b"if-none-match"), request.get(b"if-modified-since"), etag, modified
    ):
        return 304
    return 200


def not_modified(
    if_none_match: bytes | None, if_modified_since: bytes | None, etag: bytes, modified: int
) -> bool:
    """Whether a GET/HEAD gets 304 (RFC 9110 section 13.2.2, steps 3 and 4, once If-Match and
    If-Unmodified-Since passed): If-None-Match, weakly compared (section 13.1.2), decides when
    present; only without it does If-Modified-Since count (section 13.1.3)."""
    if if_none_match is not None:
        return if_none_match == etag or etag_matches(if_none_match, etag, weak=True)
    since = _parse_date(if_modified_since)
    return since is not None and modified <= since


def _not_modified_headers(
    headers: _Headers, validators: _Headers
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of a 304 (RFC 9110 section 15.4.5): those a 200 would carry for caches
    (ETag, Cache-Control: ``validators``; Vary from ``headers``), not the representation's
    metadata (Content-Type, Last-Modified: the ETag makes it unneeded)."""
    return (*validators, *[(k, v) for k, v in headers if k == b"vary"])


def etag_matches(header: bytes, etag: bytes, *, weak: bool) -> bool:
    """Whether a list of entity tags (or ``*``) matches ``etag`` (RFC 9110 section 8.8.3.2:
    weak comparison for If-None-Match, strong for If-Match)."""
    if header.strip() == b"*":
        return True
    for item in header.split(b","):
        tag = item.strip()
        if tag.startswith(b"W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def if_range_holds(header: bytes | None, etag: bytes, modified: int) -> bool:
    """RFC 9110 section 13.1.5: a Range applies when If-Range is absent or still true; an
    entity tag is compared strongly, a date must equal Last-Modified exactly."""
    if header is None:
        return True
    value = header.strip()
    if value.startswith((b'"', b"W/")):
        return value == etag
    return _parse_date(value) == modified


def parse_ranges(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable byte ranges (first, last inclusive) of a Range header (RFC 9110
    section 14.1.2); ``[]`` when none is satisfiable (416); None when the header is to be
    ignored (another unit, bad syntax, too many ranges: the whole file is sent)."""
    unit, sep, specs = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    ranges: list[tuple[int, int]] = []
    seen = 0
    for item in specs.split(b","):
        spec = item.strip()
        if not spec:
            continue
        seen += 1
        if seen > MAX_RANGES:
            return None
        first, dash, last = spec.partition(b"-")
        first, last = first.strip(), last.strip()
        if not dash or not (first.isdigit() or (not first and last.isdigit())):
            return None
        if last and not last.isdigit():
            return None
        if first:
            start = int(first)
            end = int(last) if last else size - 1
            if last and end < start:
                return None  # invalid range-spec (section 14.1.1)
            if start < size:
                ranges.append((start, min(end, size - 1)))
        else:
            suffix = int(last)
            if suffix and size:
                ranges.append((max(size - suffix, 0), size - 1))
    if not seen:
        return None
    if len(ranges) > 1:
        # Section 14.2: overlapping or adjacent ranges may be coalesced; we do, so that a
        # client cannot make us send the same bytes many times.
        ordered = sorted(ranges)
        merged = [ordered[0]]
        for start, end in ordered[1:]:
            last_start, last_end = merged[-1]
            if start <= last_end + 1:
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        if len(merged) < len(ranges):
            ranges = merged
    return ranges


def _parse_date(value: bytes | None) -> int | None:
    """An HTTP-date (RFC 9110 section 5.6.7) as a Unix time; None if absent or invalid."""
    if not value:
        return None
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
        return None if parsed is None else int(mktime_tz(parsed))
    except (ValueError, OverflowError, TypeError):
        return None


def _read_small(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(1024 * 1024)


async def _send_empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _simple(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    method: str,
) -> None:
    """A small response; the content type is plain text unless ``headers`` says otherwise."""
    fields = list(headers)
    if body and not any(name == b"content-type" for name, _ in fields):
        fields.append((b"content-type", b"text/plain; charset=utf-8"))
    fields.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body if method != "HEAD" else b""})
