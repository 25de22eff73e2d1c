"""Server configuration: frozen data, validated on construction, no I/O.

Every option has exactly one default, here. The CLI reads its defaults from :data:`DEFAULTS`,
and ``asgiserve.run(app, **options)`` takes the same flat option names as the CLI's long flags
(``timeout_keep_alive=5``); :meth:`Config.from_options` sorts them into the nested groups.
Loading the app, picking backends or building SSL contexts happens elsewhere
(:mod:`asgiserve.loading`) and never writes back into a Config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from asgiserve.logging import DEFAULT_ACCESS_LOG_FORMAT, AccessLogFormatError, compile_access_format
from asgiserve.transport.binding import parse_bind

__all__ = [
    "DEFAULTS",
    "TLS",
    "Config",
    "ConfigError",
    "Limits",
    "Reload",
    "Timeouts",
    "WebSocket",
    "parse_tls_version",
    "split_allow_ips",
]

LoopChoice = Literal["auto", "asyncio", "uvloop"]
HTTPChoice = Literal["auto", "httptools", "h11"]
WSChoice = Literal["auto", "none", "websockets"]
LifespanChoice = Literal["auto", "on", "off"]
InterfaceChoice = Literal["auto", "asgi3", "asgi2", "wsgi"]
ProxyProtocolChoice = Literal["off", "v1", "v2", "auto"]
LogFormatChoice = Literal["text", "json"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """An option has a value the server cannot run with; the message names the option."""


def flag(name: str) -> str:
    """An option's command-line flag, for messages: ``limit_concurrency`` ->
    ``--limit-concurrency`` (the same name ``asgiserve.run()`` takes, with ``_``)."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. CLI flags: ``--timeout-<field>``."""

    #: Close a keep-alive connection idle this long.
    keep_alive: float = 5.0
    #: From the first byte of a request to the end of its head; then 408 and close.
    request_head: float = 10.0
    #: While a request body is read, each 64 KiB of it must come within this many seconds
    #: (a body that trickles in forever); then 408 and close.
    request_body: float = 30.0
    #: A client that stops reading a response must take some of it within this many seconds
    #: (writing resumes); else the connection is dropped.
    response_write: float = 60.0
    #: On shutdown, how long in-flight requests may take before they are cancelled.
    graceful_shutdown: float = 30.0
    #: With workers: a worker whose event loop does not answer the supervisor's health ping
    #: within this many seconds is killed and replaced.
    worker_healthcheck: float = 5.0
    #: With TLS: a client must complete its handshake within this many seconds of connecting.
    tls_handshake: float = 10.0
    #: With ``proxy_protocol``: the PROXY header must arrive within this many seconds.
    proxy_protocol: float = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Counts and sizes. CLI flags: ``--limit-<field>``."""

    #: 503 beyond this many open connections or running requests.
    concurrency: int | None = None
    #: Exit cleanly after serving this many requests (with workers: be replaced gracefully).
    max_requests: int | None = None
    #: Add a random 0..N to ``max_requests``, drawn once per process, so that workers started
    #: together are not all recycled at the same moment.
    max_requests_jitter: int = 0
    #: With workers: replace a worker gracefully once its resident memory exceeds this (MiB).
    worker_memory: int | None = None
    #: Bytes in the request line (414 beyond).
    request_line: int = 8192
    #: Bytes in the request head: request line and header section (431 beyond).
    request_head: int = 65536
    #: Header fields in a request (431 beyond).
    request_fields: int = 100
    #: Bytes in a chunk-size line of a chunked request body, extensions included (400 beyond):
    #: long extensions are a smuggling and slow-loris vector (as llhttp and Node cap them).
    chunk_line: int = 4096
    #: Bytes in a request body (413 beyond); None: no limit.
    request_body: int | None = None
    #: Bytes of a request body the app did not read that are read and dropped after its
    #: response, to keep the connection; beyond this the connection is closed instead.
    discard_body: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebSocket:
    """WebSocket limits and timers. CLI flags: ``--ws-<field>``."""

    #: Largest incoming message in bytes, after decompression (1009 beyond).
    max_size: int = 16 * 1024 * 1024
    #: Incoming messages queued for the app before reading pauses.
    max_queue: int = 32
    #: Seconds between keep-alive pings.
    ping_interval: float = 20.0
    #: Seconds to wait for a ping's pong before closing the connection (1011).
    ping_timeout: float = 20.0
    #: Seconds to wait for the peer's close frame after ours before dropping the connection.
    close_timeout: float = 10.0
    #: Negotiate permessage-deflate compression (RFC 7692).
    per_message_deflate: bool = True


@dataclass(frozen=True, slots=True)
class Reload:
    """What ``--reload`` watches. CLI flags: ``--reload-dir``, ``--reload-include``,
    ``--reload-exclude`` (all repeatable)."""

    #: Directories to watch; none given: the app directory (``--app-dir``).
    dirs: tuple[str, ...] = ()
    #: Glob patterns of file names to watch, in addition to ``*.py``.
    includes: tuple[str, ...] = ()
    #: Glob patterns of file or directory names to ignore, in addition to the defaults
    #: (hidden files and directories, ``__pycache__``, ``*.py[cod]``, editor backups, ...).
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class H2:
    """HTTP/2 limits. CLI flags: ``--h2-<field>``."""

    #: Streams a client may have open at once (RST_STREAM REFUSED_STREAM beyond).
    max_concurrent_streams: int = 100
    #: Bytes of decoded request headers per stream (the HPACK header list size).
    max_header_list_size: int = 65536
    #: Bytes a client may send on a stream before we acknowledge them (SETTINGS).
    initial_window_size: int = 262144
    #: Streams a client may reset (or have refused) per 10 s before GOAWAY
    #: ENHANCE_YOUR_CALM (rapid-reset protection).
    max_resets: int = 200


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS (HTTPS/WSS). CLI flags: ``--ssl-<field>`` (the names uvicorn users know).

    Paths are only checked when the server loads them (:mod:`asgiserve.loading`).
    """

    #: PEM file with the server certificate (and its chain); TLS is on when this is set.
    certfile: str | None = None
    #: PEM file with the private key; None: the key is in ``certfile``.
    keyfile: str | None = None
    #: Password of an encrypted ``keyfile``.
    keyfile_password: str | None = None
    #: PEM file with the CA certificates client certificates are verified against.
    ca_certs: str | None = None
    #: Client certificates: 0 not asked for, 1 optional (verified if sent), 2 required
    #: (``ssl.CERT_NONE``/``CERT_OPTIONAL``/``CERT_REQUIRED``, as in uvicorn).
    cert_reqs: int = 0
    #: OpenSSL cipher list for TLS 1.2 and below; None: OpenSSL's defaults.
    ciphers: str | None = None
    #: Lowest TLS version accepted: ``TLSv1_2`` (also ``TLSv1.2``, ``1.2``) or ``TLSv1_3``.
    version: str = "TLSv1_2"

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


#: Minimum TLS versions by the spellings ``--ssl-version`` accepts, normalised.
TLS_VERSIONS = {"1": (1, 0), "1.0": (1, 0), "1.1": (1, 1), "1.2": (1, 2), "1.3": (1, 3)}

#: uvicorn's ``--ssl-version`` takes the ssl module's ``PROTOCOL_*`` number; as lowest versions:
#: PROTOCOL_TLS (2), PROTOCOL_TLS_CLIENT (16) and PROTOCOL_TLS_SERVER (17, uvicorn's default)
#: mean "what OpenSSL allows", for which our floor is TLS 1.2; PROTOCOL_TLSv1 (3), _TLSv1_1 (4)
#: and _TLSv1_2 (5) name one version, taken here as the lowest one accepted.
SSL_PROTOCOL_NUMBERS = {
    "2": (1, 2),
    "16": (1, 2),
    "17": (1, 2),
    "3": (1, 0),
    "4": (1, 1),
    "5": (1, 2),
}


def parse_tls_version(value: str) -> tuple[int, int]:
    """``TLSv1_2``, ``TLSv1.2``, ``tls1.2`` or ``1.2`` -> ``(1, 2)``."""
    text = str(value).strip().lower().replace("_", ".")
    if text in SSL_PROTOCOL_NUMBERS:
        return SSL_PROTOCOL_NUMBERS[text]
    for prefix in ("tlsv", "tls"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    try:
        return TLS_VERSIONS[text]
    except KeyError:
        raise ConfigError(
            f"--ssl-version must be one of TLSv1, TLSv1_1, TLSv1_2, TLSv1_3 (or the ssl module's "
            f"PROTOCOL_* number, as uvicorn takes it); got {value!r}"
        ) from None


_GROUPS: dict[str, tuple[str, type[Any]]] = {
    "timeout_": ("timeouts", Timeouts),
    "limit_": ("limits", Limits),
    "ws_": ("websocket", WebSocket),
    "h2_": ("h2", H2),
    "ssl_": ("tls", TLS),
    # The group is ``reloader`` because ``reload`` is the top-level switch (``--reload``).
    "reload_": ("reloader", Reload),
}


@dataclass(frozen=True, slots=True)
class Config:
    #: An ASGI app, or an import string ``"module:attribute"``; None with ``static``.
    app: str | Callable[..., Any] | None
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    fd: int | None = None
    backlog: int = 2048
    loop: LoopChoice = "auto"
    http: HTTPChoice = "auto"
    #: WebSocket support: ``auto`` (when ``websockets`` is installed), ``websockets``, ``none``.
    ws: WSChoice = "auto"
    lifespan: LifespanChoice = "auto"
    #: How to call the app: ``auto`` (ASGI 3, or ASGI 2 when it takes one argument), ``asgi3``,
    #: ``asgi2``, or ``wsgi`` (through a2wsgi, the ``wsgi`` extra).
    interface: InterfaceChoice = "auto"
    root_path: str = ""
    factory: bool = False
    app_dir: str = "."
    env_file: str | None = None
    log_level: str = "info"
    access_log: bool = True
    #: Colour the level names of text logs: None: when stderr is a terminal.
    use_colors: bool | None = None
    #: Run each connection's requests in an empty contextvars.Context instead of a copy of the
    #: server's (context variables set around ``serve()`` or by the lifespan are then not seen).
    reset_contextvars: bool = False
    #: After startup (app loaded, lifespan started), collect garbage once and move every object
    #: alive then into the collector's permanent generation (``gc.freeze()``): full
    #: collections under load then scan only what requests allocate, not the app's modules, so
    #: they stop showing as latency spikes. Off by default here, where the server may be
    #: embedded in a program whose garbage it does not own; the CLI turns it on.
    gc_freeze: bool = False
    server_header: bool = True
    date_header: bool = True
    #: Extra response headers as ``(name, value)`` pairs (``--header NAME:VALUE``).
    headers: tuple[tuple[str, str], ...] = ()
    #: Extra listeners, each ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH`` or ``fd://N``; with
    #: any of these (or ``uds``/``fd``) ``host``/``port`` are not used.
    bind: tuple[str, ...] = ()
    #: Run this many worker processes under a supervisor; None: serve in this one process.
    workers: int | None = None
    #: Development: restart the server when a watched file changes (see ``reloader``).
    reload: bool = False
    #: Write the server's PID here at start, remove it at exit.
    pid_file: str | None = None
    #: Apply X-Forwarded-* and Forwarded headers from trusted peers (``forwarded_allow_ips``).
    proxy_headers: bool = True
    #: Peers whose forwarding headers are believed: IPs, CIDR networks, ``*`` (any) and
    #: ``unix:`` (connections on unix sockets). A string is split on commas.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    #: The PROXY protocol header (HAProxy, cloud load balancers) before TLS and HTTP:
    #: ``off``, ``v1``, ``v2`` or ``auto`` (either version, or none).
    proxy_protocol: ProxyProtocolChoice = "off"
    #: The access log line; fields in braces, see :mod:`asgiserve.logging`.
    access_log_format: str = DEFAULT_ACCESS_LOG_FORMAT
    #: ``text`` (one line, coloured on a TTY) or ``json`` (one JSON object per line).
    log_format: LogFormatChoice = "text"
    #: A logging configuration file: dictConfig in JSON or YAML, or fileConfig INI.
    log_config: str | None = None
    #: Serve this folder instead of an app (``--static DIR``): directory listing and
    #: ``index.html`` on, like ``python -m http.server``.
    static: str | None = None
    #: Folders served in front of the app, each ``PREFIX=DIR`` (``--mount /static=DIR``):
    #: requests at or below PREFIX never reach the app.
    mounts: tuple[str, ...] = ()
    #: For ``static`` and ``mounts``: serve symbolic links that point outside the folder.
    follow_symlinks: bool = False
    #: For ``static`` and ``mounts``: how many files per folder keep a descriptor open so the
    #: server answers them without opening them (0: none; each request then runs the app).
    static_open_files: int = 64
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    websocket: WebSocket = field(default_factory=WebSocket)
    #: HTTP/2 (h2c and, with TLS, ALPN "h2") when the ``h2`` package is installed.
    http2: bool = True
    h2: H2 = field(default_factory=H2)
    tls: TLS = field(default_factory=TLS)
    reloader: Reload = field(default_factory=Reload)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_options(cls, app: str | Callable[..., Any] | None, **options: Any) -> Config:
        """Build a Config from flat option names (the CLI's long flags with ``_``)."""
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {name: {} for name, _ in _GROUPS.values()}
        top_fields = {f.name for f in dataclasses.fields(cls)}
        for key, value in options.items():
            for prefix, (group, group_cls) in _GROUPS.items():
                short = key.removeprefix(prefix)
                if short != key and short in {f.name for f in dataclasses.fields(group_cls)}:
                    grouped[group][short] = value
                    break
            else:
                if key not in top_fields or key in ("app", *grouped):
                    raise ConfigError(f"unknown option {key!r}")
                top[key] = value
        if "headers" in top:
            top["headers"] = tuple(parse_header(h) for h in top["headers"])
        if "bind" in top:
            top["bind"] = _strings(top["bind"])
        if "mounts" in top:
            top["mounts"] = _strings(top["mounts"])
        if "forwarded_allow_ips" in top:
            top["forwarded_allow_ips"] = split_allow_ips(top["forwarded_allow_ips"])
        for name in ("dirs", "includes", "excludes"):
            if name in grouped["reloader"]:
                grouped["reloader"][name] = _strings(grouped["reloader"][name])
        for prefix, (group, group_cls) in _GROUPS.items():
            del prefix
            top[group] = group_cls(**grouped[group])
        return cls(app=app, **top)


def option_defaults() -> dict[str, Any]:
    """Every option's default under its flat name (``timeout_keep_alive``, ``port``, ...)."""
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name == "app":
            continue
        if f.name in {group for group, _ in _GROUPS.values()}:
            prefix = next(p for p, (g, _) in _GROUPS.items() if g == f.name)
            group_cls = dict(_GROUPS.values())[f.name]
            for g in dataclasses.fields(group_cls):
                defaults[prefix + g.name] = g.default
        else:
            defaults[f.name] = f.default
    return defaults


DEFAULTS: Mapping[str, Any] = option_defaults()


def parse_header(header: str | Sequence[str]) -> tuple[str, str]:
    """``"name:value"`` (CLI) or a ``(name, value)`` pair, checked for CR/LF and a valid name."""
    if isinstance(header, str):
        name, sep, value = header.partition(":")
        if not sep:
            raise ConfigError(f"--header {header!r}: expected NAME:VALUE")
    else:
        name, value = header
    name, value = name.strip(), value.strip()
    if not name or any(c in name for c in " \t:\r\n") or any(c in value for c in "\r\n\0"):
        raise ConfigError(f"--header {name}:{value}: invalid header name or value")
    return name.lower(), value


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{flag(name)} must be a positive number, got {value!r}")


def _validate(config: Config) -> None:
    if not (isinstance(config.port, int) and 0 <= config.port <= 65535):
        raise ConfigError(f"--port must be between 0 and 65535, got {config.port!r}")
    if config.fd is not None and config.fd < 0:
        raise ConfigError(f"--fd must be a non-negative file descriptor, got {config.fd!r}")
    _positive("backlog", config.backlog)
    for name, allowed in (
        ("loop", ("auto", "asyncio", "uvloop")),
        ("http", ("auto", "httptools", "h11")),
        ("ws", ("auto", "none", "websockets")),
        ("lifespan", ("auto", "on", "off")),
        ("interface", ("auto", "asgi3", "asgi2", "wsgi")),
        ("proxy_protocol", ("off", "v1", "v2", "auto")),
        ("log_format", ("text", "json")),
        ("log_level", LOG_LEVELS),
    ):
        if getattr(config, name) not in allowed:
            raise ConfigError(
                f"{flag(name)} must be one of {', '.join(allowed)}; got {getattr(config, name)!r}"
            )
    if config.root_path and (
        not config.root_path.startswith("/") or config.root_path.endswith("/")
    ):
        raise ConfigError(
            f"--root-path must start with '/' and not end with one, got {config.root_path!r}"
        )
    if config.app is None:
        if config.static is None:
            raise ConfigError(
                "an app is required: an ASGI application or an import string 'module:attr' "
                "(or --static DIR, to serve a folder)"
            )
    elif config.static is not None:
        raise ConfigError("--static serves a folder in place of an app: give an app or --static")
    elif not isinstance(config.app, str) and not callable(config.app):
        raise ConfigError("app must be an ASGI application or an import string 'module:attr'")
    _validate_static(config)
    for f in dataclasses.fields(Timeouts):
        _positive(f"timeout_{f.name}", getattr(config.timeouts, f.name))
    limits = config.limits
    _positive("limit_concurrency", limits.concurrency, allow_none=True)
    _positive("limit_max_requests", limits.max_requests, allow_none=True)
    for name in ("request_line", "request_head", "request_fields", "chunk_line", "discard_body"):
        _positive(f"limit_{name}", getattr(limits, name))
    for name in ("max_concurrent_streams", "max_header_list_size", "max_resets"):
        _positive(f"h2_{name}", getattr(config.h2, name))
    if not 65535 <= config.h2.initial_window_size <= 2**31 - 1:
        raise ConfigError("--h2-initial-window-size must be between 65535 and 2147483647")
    websocket = config.websocket
    for name in ("max_size", "max_queue", "ping_interval", "ping_timeout", "close_timeout"):
        _positive(f"ws_{name}", getattr(websocket, name))
    if limits.request_line > limits.request_head:
        raise ConfigError("--limit-request-line cannot exceed --limit-request-head")
    for header in config.headers:
        parse_header(header)
    _positive("limit_request_body", limits.request_body, allow_none=True)
    _validate_edge(config)
    _validate_process_model(config)


def _strings(value: str | Sequence[str]) -> tuple[str, ...]:
    """A repeatable option's values as a tuple (a lone string is one value, not characters)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _validate_process_model(config: Config) -> None:
    """Listeners, workers, reload, recycling: the options the supervisors act on."""
    for address in config.bind:
        try:
            parse_bind(address)
        except ValueError as exc:
            raise ConfigError(f"--bind {address!r}: {exc}") from None
    workers = config.workers
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if (
        (workers is not None or config.reload)
        and not isinstance(config.app, str)
        and config.static is None
    ):
        # Worker processes import the app themselves; an app object cannot cross into them.
        option = "--reload" if config.reload else "--workers"
        raise ConfigError(
            f"{option} needs the app as an import string 'module:attr' (each worker process "
            "imports it), not an app object"
        )
    if config.reload and workers is not None and workers > 1:
        raise ConfigError("--reload runs a single worker: it cannot be combined with --workers > 1")
    limits = config.limits
    jitter = limits.max_requests_jitter
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ConfigError(
            f"--limit-max-requests-jitter must be a whole number >= 0, got {jitter!r}"
        )
    if jitter and limits.max_requests is None:
        raise ConfigError("--limit-max-requests-jitter needs --limit-max-requests")
    _positive("limit_worker_memory", limits.worker_memory, allow_none=True)
    if limits.worker_memory is not None and workers is None:
        raise ConfigError(
            "--limit-worker-memory needs --workers: the supervisor is what replaces a worker"
        )
    for name in ("dirs", "includes", "excludes"):
        values = getattr(config.reloader, name)
        if not isinstance(values, tuple) or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(
                f"{flag('reload_' + name.removesuffix('s'))} must be a list of non-empty strings"
            )


def parse_mount(mount: str) -> tuple[str, str]:
    """``"/static=DIR"`` -> ``("/static", "DIR")``, the prefix checked."""
    prefix, sep, directory = mount.partition("=")
    if not sep or not directory:
        raise ConfigError(f"--mount {mount!r}: expected PREFIX=DIR, e.g. /static=./public")
    if not prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "?#\0"):
        raise ConfigError(
            f"--mount {mount!r}: the prefix must start with '/' and not end with one "
            "(to serve a folder at '/', use --static)"
        )
    return prefix, directory


def _validate_static(config: Config) -> None:
    """``static``, ``mounts``: shapes only; whether the folders exist is checked on load."""
    if config.static is not None and (not isinstance(config.static, str) or not config.static):
        raise ConfigError(f"--static must be a folder path, got {config.static!r}")
    if not isinstance(config.mounts, tuple) or not all(isinstance(m, str) for m in config.mounts):
        raise ConfigError("--mount values must be PREFIX=DIR strings")
    open_files = config.static_open_files
    if isinstance(open_files, bool) or not isinstance(open_files, int) or open_files < 0:
        raise ConfigError(f"--static-open-files must be a whole number >= 0, got {open_files!r}")
    prefixes = [parse_mount(mount)[0] for mount in config.mounts]
    for prefix in prefixes:
        if prefixes.count(prefix) > 1:
            raise ConfigError(f"--mount: the prefix {prefix!r} is given more than once")


def split_allow_ips(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` or a list of entries -> a tuple of stripped entries."""
    items = value.split(",") if isinstance(value, str) else [i for v in value for i in v.split(",")]
    return tuple(item.strip() for item in items if item.strip())


def _validate_edge(config: Config) -> None:
    """TLS, proxies and logging: the options of the edge."""
    from asgiserve.middleware.proxy_headers import TrustedPeers

    try:
        TrustedPeers(config.forwarded_allow_ips)
    except ValueError as exc:
        raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
    try:
        compile_access_format(config.access_log_format)
    except AccessLogFormatError as exc:
        raise ConfigError(f"--access-log-format: {exc}") from None
    tls = config.tls
    parse_tls_version(tls.version)
    if tls.cert_reqs not in (0, 1, 2) or isinstance(tls.cert_reqs, bool):
        raise ConfigError(
            f"--ssl-cert-reqs must be 0 (none), 1 (optional) or 2 (required), got {tls.cert_reqs!r}"
        )
    if not tls.enabled:
        given = [
            f"--ssl-{name.replace('_', '-')}"
            for name in ("keyfile", "keyfile_password", "ca_certs", "ciphers")
            if getattr(tls, name) is not None
        ]
        if tls.cert_reqs:
            given.append("--ssl-cert-reqs")
        if given:
            raise ConfigError(f"{', '.join(given)} given without --ssl-certfile: TLS is off")
    elif tls.cert_reqs and tls.ca_certs is None:
        raise ConfigError(
            "--ssl-cert-reqs asks for client certificates: --ssl-ca-certs must name the CA "
            "certificates to verify them against"
        )
