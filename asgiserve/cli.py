"""The ``asgiserve`` command: options -> Config -> run.

Each option is declared once here, with its default read from :data:`asgiserve.config.DEFAULTS`.
Every option can also be set from the environment as ``ASGISERVE_<OPTION>``
(``ASGISERVE_PORT=9000``, ``ASGISERVE_TIMEOUT_KEEP_ALIVE=75``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import click

from asgiserve._version import __version__
from asgiserve.compat import Note, log_notes, translate_uvicorn_options
from asgiserve.config import DEFAULTS, LOG_LEVELS, Config, ConfigError

__all__ = ["main"]

#: ``--help`` sections, in order: each option goes in the first section whose names or name
#: prefixes match its parameter name (``timeout_`` holds every ``--timeout-*`` flag).
HELP_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Server",
        (
            "host",
            "port",
            "uds",
            "fd",
            "bind",
            "backlog",
            "loop",
            "lifespan",
            "interface",
            "factory",
            "app_dir",
            "env_file",
            "root_path",
            "reset_contextvars",
            "gc_freeze",
            "config_file",
            "version",
        ),
    ),
    ("HTTP", ("http", "server_header", "date_header", "headers")),
    ("WebSockets", ("ws", "ws_", "no_ws_")),
    ("HTTP/2", ("http2", "h2_")),
    ("TLS", ("ssl_",)),
    ("Proxies", ("proxy_headers", "forwarded_allow_ips", "proxy_protocol")),
    ("Limits and timeouts", ("limit_", "timeout_", "h11_max_incomplete_event_size")),
    ("Processes", ("workers", "reload", "reload_", "pid_file")),
    ("Logging", ("log_", "access_log", "access_log_format", "use_colors")),
    ("Static files", ("static", "mounts", "follow_symlinks", "static_")),
)


def help_section(name: str | None) -> str | None:
    """The ``--help`` section of the option whose parameter is ``name``."""
    if name is None:
        return None
    for title, keys in HELP_SECTIONS:
        for key in keys:
            if name == key or (key.endswith("_") and name.startswith(key)):
                return title
    return None


def _help_record(param: click.Parameter, ctx: click.Context) -> tuple[str, str] | None:
    """An option's ``--help`` row, a boolean default reading ``on``/``off`` (click would show
    the flag's name, ``[default: ws-per-message-deflate]``, or nothing for a plain flag)."""
    if not isinstance(param, click.Option):
        return None
    record = param.get_help_record(ctx)
    if record is None or param.show_default is False or not isinstance(param.default, bool):
        return record
    if not (param.is_flag or param.type is click.BOOL):
        return record
    flags, text = record
    text = re.sub(r"\s*\[default: [^\]]*\]$", "", text)
    return flags, f"{text}  [default: {'on' if param.default else 'off'}]"


class _Command(click.Command):
    """``--help`` with the options in sections (:data:`HELP_SECTIONS`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {title: [] for title, _ in HELP_SECTIONS}
        for param in self.get_params(ctx):
            record = _help_record(param, ctx)
            if record is None:
                continue
            # click's own --help option goes with the server's.
            section = "Server" if param is self.get_help_option(ctx) else help_section(param.name)
            rows.setdefault(section or "Other", []).append(record)
        for title, records in rows.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _default(name: str) -> Any:
    return DEFAULTS[name]


def _show(name: str) -> Any:
    value = DEFAULTS[name]
    return "none" if value is None else value


def _read_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--config FILE``, or ``[tool.asgiserve]`` in ./pyproject.toml: the file's options become
    click's ``default_map``, so the command line and the environment still win over them."""
    if ctx.resilient_parsing:
        return
    from asgiserve.config_file import ConfigFileError, find_config, read_config

    try:
        path = value if value is not None else find_config()
        if path is None:
            return
        options, source = read_config(path)
    except ConfigFileError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    names = _option_names(ctx.command)
    default_map: dict[str, Any] = {}
    for key, item in options.items():
        name = names.get(key)
        if name is None:
            raise click.BadParameter(
                f"unknown option {key!r} in {source} (options are named like the long "
                "command-line flags, with '_' for '-': root_path, timeout_keep_alive, ...)",
                ctx=ctx,
                param=param,
            )
        if name == "forwarded_allow_ips" and isinstance(item, list):
            default_map[name] = ",".join(map(str, item))
        else:
            default_map[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **default_map}


def _option_names(command: click.Command) -> dict[str, str]:
    """Config file keys -> parameter names: each long flag with ``_`` for ``-``
    (``reload_dir`` for ``--reload-dir``), and the parameter's own name (``reload_dirs``)."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.name is None or param.name in ("config_file", "version", "help"):
            continue
        if not param.expose_value:
            continue
        names[param.name] = param.name
        for opt in param.opts:
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = param.name
    return names


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from asgiserve._compiled import build_description

    click.echo(
        f"asgiserve {__version__} ({sys.implementation.name} "
        f"{'.'.join(map(str, sys.version_info[:3]))}, {build_description()})"
    )
    ctx.exit()


@click.command(
    cls=_Command,
    context_settings={"auto_envvar_prefix": "ASGISERVE", "help_option_names": ["-h", "--help"]},
)
@click.argument("app", envvar="ASGISERVE_APP", required=False)
@click.option("--host", default=_default("host"), show_default=True, help="Bind to this address.")
@click.option(
    "--port",
    type=int,
    default=_default("port"),
    show_default=True,
    help="Bind to this port (0: any free port).",
)
@click.option("--uds", default=None, help="Bind to this unix domain socket instead.")
@click.option(
    "--fd",
    type=int,
    default=None,
    help="Serve on this inherited socket file descriptor (systemd socket activation).",
)
@click.option(
    "--bind",
    "bind",
    multiple=True,
    metavar="ADDRESS",
    help="Also listen here: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (repeatable). "
    "With --bind, --uds or --fd, --host/--port are not used.",
)
@click.option(
    "--workers",
    type=int,
    default=_default("workers"),
    # WEB_CONCURRENCY is the variable platforms (Heroku, Render, ...) set for this.
    envvar=["ASGISERVE_WORKERS", "WEB_CONCURRENCY"],
    show_default="$WEB_CONCURRENCY",
    help="Run N worker processes under a supervisor (SIGHUP: rolling restart, "
    "SIGTTIN/SIGTTOU: one more/less). Unset: the server runs in this one process.",
)
@click.option(
    "--reload",
    is_flag=True,
    default=_default("reload"),
    help="Development: restart when files change (watchfiles if installed, else polling).",
)
@click.option(
    "--reload-dir",
    "reload_dirs",
    multiple=True,
    metavar="DIR",
    help="Watch this directory (repeatable) [default: the app directory].",
)
@click.option(
    "--reload-include",
    "reload_includes",
    multiple=True,
    metavar="GLOB",
    help="Also watch files matching this pattern (repeatable; *.py always).",
)
@click.option(
    "--reload-delay",
    type=float,
    default=None,
    metavar="SECONDS",
    help="uvicorn's; ignored with a warning: the reloader acts on change events "
    "(or polls every 0.25 s).",
)
@click.option(
    "--reload-exclude",
    "reload_excludes",
    multiple=True,
    metavar="GLOB",
    help="Ignore files and directories matching this pattern (repeatable; hidden ones, "
    "__pycache__, node_modules, ... always).",
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the server's PID to this file (removed at exit).",
)
@click.option(
    "--backlog",
    type=int,
    default=_default("backlog"),
    show_default=True,
    help="Pending connections the kernel may queue.",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop", "zuvloop"]),
    default=_default("loop"),
    show_default=True,
    help="Event loop (zuvloop, uvicorn's own: uvloop).",
)
@click.option(
    "--http",
    type=click.Choice(["auto", "httptools", "h11", "zttp"]),
    default=_default("http"),
    show_default=True,
    help="HTTP/1.1 parser (zttp, uvicorn's own: auto).",
)
@click.option(
    "--ws",
    type=click.Choice(["auto", "none", "websockets", "websockets-sansio", "wsproto"]),
    default=_default("ws"),
    show_default=True,
    help="WebSocket support (none: upgrade requests are served as plain HTTP; "
    "websockets-sansio and wsproto, uvicorn's names: websockets).",
)
@click.option(
    "--ws-max-size",
    type=int,
    default=_default("ws_max_size"),
    show_default=True,
    help="Largest incoming WebSocket message in bytes, after decompression (1009 beyond).",
)
@click.option(
    "--ws-max-queue",
    type=int,
    default=_default("ws_max_queue"),
    show_default=True,
    help="Incoming WebSocket messages queued for the app before reading pauses.",
)
@click.option(
    "--ws-ping-interval",
    type=float,
    default=_default("ws_ping_interval"),
    show_default=True,
    help="Seconds between WebSocket keep-alive pings.",
)
@click.option(
    "--ws-ping-timeout",
    type=float,
    default=_default("ws_ping_timeout"),
    show_default=True,
    help="Seconds to wait for a pong before closing the WebSocket (1011).",
)
@click.option(
    "--ws-close-timeout",
    type=float,
    default=_default("ws_close_timeout"),
    show_default=True,
    help="Seconds to wait for the peer's close frame after ours.",
)
@click.option(
    "--ws-per-message-deflate",
    type=click.BOOL,
    # uvicorn's syntax takes a value (--ws-per-message-deflate false); alone, the flag is on.
    is_flag=False,
    flag_value=True,
    default=_default("ws_per_message_deflate"),
    show_default=True,
    metavar="[BOOLEAN]",
    help="Negotiate permessage-deflate compression.",
)
@click.option(
    "--no-ws-per-message-deflate",
    is_flag=True,
    default=False,
    show_default=False,
    help="The same as --ws-per-message-deflate false.",
)
@click.option(
    "--http2/--no-http2",
    default=_default("http2"),
    show_default=True,
    help="HTTP/2: h2c (prior knowledge and Upgrade) and ALPN h2 over TLS; needs the h2 package.",
)
@click.option(
    "--h2-max-concurrent-streams",
    type=int,
    default=_default("h2_max_concurrent_streams"),
    show_default=True,
    help="HTTP/2 streams a client may have open at once (REFUSED_STREAM beyond).",
)
@click.option(
    "--h2-max-header-list-size",
    type=int,
    default=_default("h2_max_header_list_size"),
    show_default=True,
    help="Bytes of decoded request headers per HTTP/2 stream.",
)
@click.option(
    "--h2-initial-window-size",
    type=int,
    default=_default("h2_initial_window_size"),
    show_default=True,
    help="Bytes a client may send per HTTP/2 stream before we acknowledge them.",
)
@click.option(
    "--h2-max-resets",
    type=int,
    default=_default("h2_max_resets"),
    show_default=True,
    help="Streams a client may reset per 10 s before GOAWAY ENHANCE_YOUR_CALM.",
)
@click.option(
    "--lifespan",
    type=click.Choice(["auto", "on", "off"]),
    default=_default("lifespan"),
    show_default=True,
    help="ASGI lifespan protocol.",
)
@click.option(
    "--interface",
    type=click.Choice(["auto", "asgi3", "asgi2", "wsgi"]),
    default=_default("interface"),
    show_default=True,
    help="How to call APP: auto (ASGI 3, or ASGI 2 for a one-argument callable), asgi3, asgi2, "
    "or wsgi (through a2wsgi: install the wsgi extra).",
)
@click.option(
    "--reset-contextvars",
    is_flag=True,
    default=_default("reset_contextvars"),
    help="Run requests in an empty contextvars.Context: context variables set around the "
    "server (or by the lifespan) are not seen.",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="After startup, freeze what is alive (gc.freeze()) so that full garbage collections "
    "under load scan only what requests allocate: shorter latency spikes.",
)
@click.option(
    "--root-path",
    default=_default("root_path"),
    help="The prefix the app is mounted under behind a proxy (ASGI root_path).",
)
@click.option(
    "--static",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    metavar="DIR",
    help="Serve the files in DIR instead of an app (no APP; folder listings and index.html, "
    "like python -m http.server).",
)
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    metavar="PREFIX=DIR",
    help="Serve the files in DIR under the URL PREFIX, in front of the app: those requests "
    "never reach it (repeatable; e.g. --mount /static=./public).",
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    default=_default("follow_symlinks"),
    help="With --static/--mount: serve symbolic links that point outside the folder.",
)
@click.option(
    "--static-open-files",
    type=int,
    default=_default("static_open_files"),
    show_default=True,
    metavar="N",
    help="With --static/--mount: files per folder kept open, so that the server answers a "
    "plain GET of them without opening them (0: none).",
)
@click.option(
    "--factory",
    is_flag=True,
    default=_default("factory"),
    help="APP is a callable that returns the ASGI app.",
)
@click.option(
    "--app-dir",
    default=_default("app_dir"),
    show_default=True,
    help="Look for APP's module in this directory.",
)
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Load environment variables from this file first.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default=_default("log_level"),
    show_default=True,
    help="Log level.",
)
@click.option(
    "--access-log/--no-access-log",
    default=_default("access_log"),
    show_default=True,
    help="Log one line per response.",
)
@click.option(
    "--use-colors/--no-use-colors",
    default=None,
    show_default="when stderr is a terminal",
    help="Colour the level names of text logs.",
)
@click.option(
    "--server-header/--no-server-header",
    default=_default("server_header"),
    show_default=True,
    help="Send 'server: asgiserve'.",
)
@click.option(
    "--date-header/--no-date-header",
    default=_default("date_header"),
    show_default=True,
    help="Send a 'date' header.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME:VALUE",
    help="Add a response header (repeatable).",
)
@click.option(
    "--access-log-format",
    default=_default("access_log_format"),
    show_default=True,
    help="The access log line: {client} {client_host} {client_port} {method} {scheme} {path} "
    "{query} {target} {protocol} {status} {bytes} {duration_ms} {pid}, {Name}i (request "
    "header), {Name}o (response header); {{ and }} for braces.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=_default("log_format"),
    show_default=True,
    help="Log lines as text, or as JSON objects (access log fields by name).",
)
@click.option(
    "--log-config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Logging configuration used instead of ours: dictConfig as .json or .yaml/.yml "
    "(needs PyYAML), or fileConfig INI (any other extension).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Serve HTTPS/WSS with this PEM certificate (chain).",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM private key [default: in --ssl-certfile].",
)
@click.option("--ssl-keyfile-password", default=None, help="Password of an encrypted key.")
@click.option(
    "--ssl-ca-certs",
    type=click.Path(exists=True),
    default=None,
    help="CA certificates (file or directory) to verify client certificates against.",
)
@click.option(
    "--ssl-cert-reqs",
    type=click.IntRange(0, 2),
    default=_default("ssl_cert_reqs"),
    show_default=True,
    help="Client certificates: 0 not requested, 1 optional, 2 required (mTLS).",
)
@click.option(
    "--ssl-ciphers",
    default=None,
    help="OpenSSL cipher list for TLS 1.2 and below [default: OpenSSL's].",
)
@click.option(
    "--ssl-version",
    default=_default("ssl_version"),
    show_default=True,
    help="Lowest TLS version accepted: TLSv1_2 or TLSv1_3 (also TLSv1, TLSv1_1).",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=_default("proxy_headers"),
    show_default=True,
    help="Take client address, scheme and host from X-Forwarded-* / Forwarded headers "
    "sent by --forwarded-allow-ips.",
)
@click.option(
    "--forwarded-allow-ips",
    default=",".join(_default("forwarded_allow_ips")),
    show_default=True,
    envvar=["ASGISERVE_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"],
    metavar="LIST",
    help="Comma-separated peers whose proxy headers are trusted: IPs, CIDRs, '*' (any), "
    "'unix:' (unix socket peers). Also $FORWARDED_ALLOW_IPS.",
)
@click.option(
    "--proxy-protocol",
    type=click.Choice(["off", "v1", "v2", "auto"]),
    default=_default("proxy_protocol"),
    show_default=True,
    help="Read a PROXY protocol header (HAProxy, cloud load balancers) before TLS and HTTP; "
    "auto: v1, v2 or none.",
)
@click.option(
    "--timeout-keep-alive",
    type=float,
    default=_default("timeout_keep_alive"),
    show_default=True,
    help="Seconds before an idle keep-alive connection is closed.",
)
@click.option(
    "--timeout-request-head",
    type=float,
    default=_default("timeout_request_head"),
    show_default=True,
    help="Seconds from a request's first byte to the end of its head (then 408).",
)
@click.option(
    "--timeout-request-body",
    type=float,
    default=_default("timeout_request_body"),
    show_default=True,
    help="Seconds within which each 64 KiB of a request body must arrive (then 408).",
)
@click.option(
    "--timeout-response-write",
    type=float,
    default=_default("timeout_response_write"),
    show_default=True,
    help="Seconds a client that stops reading a response has to read on (then close).",
)
@click.option(
    "--timeout-graceful-shutdown",
    type=float,
    default=_default("timeout_graceful_shutdown"),
    show_default=True,
    help="Seconds in-flight requests get on shutdown.",
)
@click.option(
    "--timeout-worker-healthcheck",
    type=float,
    default=_default("timeout_worker_healthcheck"),
    show_default=True,
    help="With --workers: seconds a worker's event loop may take to answer a health ping "
    "before the worker is killed and replaced.",
)
@click.option(
    "--timeout-tls-handshake",
    type=float,
    default=_default("timeout_tls_handshake"),
    show_default=True,
    help="Seconds a client has to complete the TLS handshake.",
)
@click.option(
    "--timeout-proxy-protocol",
    type=float,
    default=_default("timeout_proxy_protocol"),
    show_default=True,
    help="Seconds for the PROXY protocol header to arrive.",
)
@click.option(
    "--limit-concurrency",
    type=int,
    default=None,
    show_default=_show("limit_concurrency"),
    help="503 beyond this many connections or requests in flight.",
)
@click.option(
    "--limit-max-requests",
    type=int,
    default=None,
    show_default=_show("limit_max_requests"),
    help="Exit after serving this many requests (with --workers: be replaced gracefully).",
)
@click.option(
    "--limit-max-requests-jitter",
    type=int,
    default=_default("limit_max_requests_jitter"),
    show_default=True,
    help="Add a random 0..N to --limit-max-requests, per process, so workers recycle apart.",
)
@click.option(
    "--limit-worker-memory",
    type=int,
    default=None,
    metavar="MIB",
    show_default=_show("limit_worker_memory"),
    help="With --workers: replace a worker gracefully once its resident memory exceeds this.",
)
@click.option(
    "--limit-request-line",
    type=int,
    default=_default("limit_request_line"),
    show_default=True,
    help="Max bytes in the request line (414).",
)
@click.option(
    "--limit-request-head",
    type=int,
    default=_default("limit_request_head"),
    show_default=True,
    help="Max bytes in the request head (431).",
)
@click.option(
    "--h11-max-incomplete-event-size",
    type=int,
    default=None,
    metavar="BYTES",
    help="uvicorn's name for --limit-request-head (here on every parser).",
)
@click.option(
    "--limit-request-fields",
    type=int,
    default=_default("limit_request_fields"),
    show_default=True,
    help="Max header fields in a request (431).",
)
@click.option(
    "--limit-chunk-line",
    type=int,
    default=_default("limit_chunk_line"),
    show_default=True,
    help="Max bytes in a chunk-size line of a chunked request body, extensions included (400).",
)
@click.option(
    "--limit-request-body",
    type=int,
    default=None,
    metavar="BYTES",
    show_default=_show("limit_request_body"),
    help="Max bytes in a request body (413 before the app reads past it).",
)
@click.option(
    "--limit-discard-body",
    type=int,
    default=_default("limit_discard_body"),
    metavar="BYTES",
    show_default=True,
    help="Max bytes of a request body the app left unread that are read and dropped to keep "
    "the connection (beyond: close).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    is_eager=True,
    expose_value=False,
    callback=_read_config_file,
    help="Read options from this TOML file (long option names with '_', e.g. "
    'root_path = "/api"); without it, [tool.asgiserve] in ./pyproject.toml. '
    "Command line > environment > file.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def main(app: str | None, **options: Any) -> None:
    """Serve the ASGI application APP, given as "module:attribute" (e.g. main:app), or a
    folder with --static DIR."""
    from asgiserve.logging import LogConfigError, configure_logging_for
    from asgiserve.supervisors import run

    options["headers"] = list(options["headers"])
    if options.pop("no_ws_per_message_deflate"):
        options["ws_per_message_deflate"] = False
    if app is None and options["static"] is None:
        raise click.UsageError("Missing argument 'APP' (or --static DIR to serve a folder).")
    for mount in options["mounts"]:
        # A missing folder is a bad option (exit 2), found before any worker starts.
        directory = mount.partition("=")[2]
        if directory and not os.path.isdir(directory):
            raise click.BadParameter(
                f"{mount!r}: no such folder {directory!r}", param_hint="--mount"
            )
    notes = _workers_with_reload(click.get_current_context(), options)
    options, uvicorn_notes = translate_uvicorn_options(options)
    try:
        config = Config.from_options(app, **options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        configure_logging_for(config)
    except LogConfigError as exc:
        raise click.UsageError(str(exc)) from None
    log_notes([*notes, *uvicorn_notes])
    code = run(config)
    sys.exit(code)


def _workers_with_reload(ctx: click.Context, options: dict[str, Any]) -> list[Note]:
    """``--reload`` runs one worker. A worker count from the environment (platforms set
    ``WEB_CONCURRENCY`` for every process) is then ignored, with a line naming the variable;
    one given on the command line is an error, as before."""
    workers = options.get("workers")
    source = ctx.get_parameter_source("workers")
    if not options.get("reload") or workers is None or workers <= 1:
        return []
    if source is not click.core.ParameterSource.ENVIRONMENT:
        return []
    variable = "ASGISERVE_WORKERS" if "ASGISERVE_WORKERS" in os.environ else "WEB_CONCURRENCY"
    options["workers"] = None
    return [
        Note(
            logging.WARNING,
            f"--reload runs one worker: the {workers} workers from {variable}={workers} are "
            "not started.",
        )
    ]
