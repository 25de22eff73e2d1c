"""The ``asgiserve`` command: options -> Config -> run.

Each option is declared once here, with its default read from :data:`asgiserve.config.DEFAULTS`.
Every option can also be set from the environment as ``ASGISERVE_<OPTION>``
(``ASGISERVE_PORT=9000``, ``ASGISERVE_TIMEOUT_KEEP_ALIVE=75``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from asgiserve._version import __version__
from asgiserve.config import DEFAULTS, LOG_LEVELS, Config, ConfigError

__all__ = ["main"]


def _default(name: str) -> Any:
    return DEFAULTS[name]


def _show(name: str) -> Any:
    value = DEFAULTS[name]
    return "none" if value is None else value


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(
        f"asgiserve {__version__} ({sys.implementation.name} "
        f"{'.'.join(map(str, sys.version_info[:3]))})"
    )
    ctx.exit()


@click.command(
    context_settings={"auto_envvar_prefix": "ASGISERVE", "help_option_names": ["-h", "--help"]}
)
@click.argument("app", envvar="ASGISERVE_APP")
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
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default=_default("loop"),
    show_default=True,
    help="Event loop.",
)
@click.option(
    "--http",
    type=click.Choice(["auto", "httptools", "h11"]),
    default=_default("http"),
    show_default=True,
    help="HTTP/1.1 parser.",
)
@click.option(
    "--ws",
    type=click.Choice(["auto", "none", "websockets"]),
    default=_default("ws"),
    show_default=True,
    help="WebSocket support (none: upgrade requests are served as plain HTTP).",
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
    "--ws-per-message-deflate/--no-ws-per-message-deflate",
    default=_default("ws_per_message_deflate"),
    show_default=True,
    help="Negotiate permessage-deflate compression.",
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
    "--root-path",
    default=_default("root_path"),
    help="The prefix the app is mounted under behind a proxy (ASGI root_path).",
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
    type=click.Path(dir_okay=False),
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
    "--limit-request-fields",
    type=int,
    default=_default("limit_request_fields"),
    show_default=True,
    help="Max header fields in a request (431).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def main(app: str, **options: Any) -> None:
    """Serve the ASGI application APP, given as "module:attribute" (e.g. main:app)."""
    from asgiserve.logging import configure_logging
    from asgiserve.supervisors import run

    options["headers"] = list(options["headers"])
    try:
        config = Config.from_options(app, **options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(config.log_level, access_log=config.access_log)
    code = run(config)
    sys.exit(code)
