"""Turning a Config into the things a worker runs: the app, the parser backend, the loop.

Each function returns a new object and leaves the Config alone. Failures raise
:class:`LoadError` with a one-line message meant for the terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from asgiserve.config import TLS, Config, parse_tls_version

logger = logging.getLogger("asgiserve.error")

if TYPE_CHECKING:
    import ssl

    from asgiserve.asgi.types import ASGIApp, Receive, Scope, Send
    from asgiserve.transport.state import ParserFactory
    from asgiserve.transport.tls import TLSInfo

__all__ = [
    "LoadError",
    "alpn_protocols",
    "create_ssl_context",
    "http2_available",
    "load_app",
    "load_env_file",
    "load_tls",
    "new_event_loop",
    "parser_factory",
    "resolve_http",
    "resolve_loop",
    "resolve_ws",
    "wrap_app",
]

INSTALL_HINT = "install the standard extra (from a clone: pip install -e '.[standard]')"


class LoadError(Exception):
    """The app or a chosen backend cannot be loaded; the message is for the user."""


def import_from_string(import_str: str) -> Any:
    module_name, sep, attrs = import_str.partition(":")
    if not sep or not module_name or not attrs:
        raise LoadError(f'Import string "{import_str}" must be in format "<module>:<attribute>".')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # the module exists but one of *its* imports failed: show the real error
        raise LoadError(f'Could not import module "{module_name}".') from exc
    instance: Any = module
    try:
        for attr in attrs.split("."):
            instance = getattr(instance, attr)
    except AttributeError:
        raise LoadError(f'Attribute "{attrs}" not found in module "{module_name}".') from None
    return instance


def load_app(config: Config) -> ASGIApp:
    """Import (or take) the app, call it if it is a factory, and adapt ASGI 2 (or WSGI, with
    ``interface="wsgi"``) to ASGI 3; with ``static``/``mounts``, serve folders instead of it or
    in front of it.

    An app the server could not call with ``(scope, receive, send)`` is a :class:`LoadError`
    here, at startup, rather than a 500 on every request.
    """
    if config.static is not None or config.mounts:
        return _load_static(config)
    app: Any = config.app
    if isinstance(app, str):
        app_dir = os.path.abspath(config.app_dir)
        if app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        app = import_from_string(app)
    name = config.app if isinstance(config.app, str) else getattr(app, "__name__", repr(app))
    if not callable(app):
        raise LoadError(f"The app {name!r} is not callable (got {type(app).__name__}).")
    factory = config.factory
    if not factory and config.interface != "wsgi" and _takes_no_arguments(app):
        # As uvicorn does: a callable that takes no arguments cannot be an app, so it must be
        # a factory (``create_app``).
        logger.warning(
            "%s takes no arguments: calling it as an app factory (--factory says so and "
            "silences this warning).",
            name,
        )
        factory = True
    if factory:
        try:
            app = app()
        except TypeError as exc:
            raise LoadError(f"Error calling the app factory {name!r}: {exc}") from exc
        if not callable(app):
            raise LoadError(
                f"The app factory {name!r} returned {type(app).__name__}, not an ASGI app."
            )
    return _adapt(app, name, config.interface)


def _adapt(app: Any, name: str, interface: str) -> ASGIApp:
    """The app behind the ASGI 3 interface, or a LoadError saying why it cannot be."""
    if interface == "wsgi":
        try:
            from a2wsgi import WSGIMiddleware
        except ImportError:
            raise LoadError(
                "--interface wsgi serves WSGI apps through a2wsgi, which is not installed; "
                "install the wsgi extra (from a clone: pip install -e '.[wsgi]')"
            ) from None
        if not _accepts(app, 2):
            raise LoadError(f"The app {name!r} cannot be called as WSGI (environ, start_response).")
        return cast("ASGIApp", WSGIMiddleware(app))
    asgi3 = interface == "asgi3" or (interface == "auto" and is_asgi3(app))
    arity = 3 if asgi3 else 1
    if not _accepts(app, arity):
        wsgi_like = _accepts(app, 2) and not inspect.iscoroutinefunction(app)
        hint = " (a WSGI app? use --interface wsgi)" if wsgi_like else ""
        raise LoadError(
            f"The app {name!r} cannot be called with "
            f"{'(scope, receive, send)' if asgi3 else '(scope) (ASGI 2)'}: "
            f"it takes {_describe_signature(app)}{hint}."
        )
    return app if asgi3 else _ASGI2Adapter(app)


def _signature(app: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(app)
    except (TypeError, ValueError):
        return None  # a builtin or extension type: nothing to check


def _accepts(app: Any, count: int) -> bool:
    """Whether ``app`` can be called with ``count`` positional arguments (True when its
    signature cannot be read)."""
    signature = _signature(app)
    if signature is None:
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _takes_no_arguments(app: Any) -> bool:
    return _signature(app) is not None and _accepts(app, 0) and not _accepts(app, 1)


def _describe_signature(app: Any) -> str:
    signature = _signature(app)
    return f"{signature}" if signature is not None else "other arguments"


def _load_static(config: Config) -> ASGIApp:
    from asgiserve.apps.mounts import Mounts
    from asgiserve.config import parse_mount

    app: ASGIApp
    if config.static is not None:
        # Like ``python -m http.server``: listings on.
        app = _static_files(f"--static {config.static}", config.static, config, listing=True)
    else:
        app = load_app(dataclasses.replace(config, mounts=()))
    if config.mounts:
        mounts = []
        for mount in config.mounts:
            prefix, directory = parse_mount(mount)
            mounts.append(
                (prefix, _static_files(f"--mount {mount}", directory, config, listing=False))
            )
        app = Mounts(app, mounts)
    return app


def _static_files(option: str, directory: str, config: Config, *, listing: bool) -> ASGIApp:
    from asgiserve.apps.static import StaticFiles

    try:
        return StaticFiles(
            os.path.abspath(directory),
            listing=listing,
            follow_symlinks=config.follow_symlinks,
            open_files=config.static_open_files,
        )
    except OSError:
        raise LoadError(f"{option}: no such folder") from None


def is_asgi3(app: Any) -> bool:
    """ASGI 3 apps are ``async (scope, receive, send)``; ASGI 2 ones are ``(scope) -> coro``."""
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - we want the method object itself
    if inspect.iscoroutinefunction(call):
        return True
    if isinstance(app, functools.partial):
        return is_asgi3(app.func)
    try:
        parameters = inspect.signature(app).parameters
    except (TypeError, ValueError):
        return True
    return len(parameters) != 1


class _ASGI2Adapter:
    """Runs an ASGI 2 (double-callable) app behind the ASGI 3 interface."""

    def __init__(self, app: Callable[[Scope], Callable[[Receive, Send], Any]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def load_env_file(path: str) -> None:
    """Load ``KEY=VALUE`` lines (``export`` prefix, quotes and comments allowed) into
    ``os.environ``; variables already set win."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise LoadError(f"Cannot read env file {path!r}: {exc.strerror}") from exc
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise LoadError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if raw.strip().endswith('"'):
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        os.environ.setdefault(key, value)


def resolve_http(choice: str) -> str:
    """``auto`` means httptools when installed, else h11."""
    if choice in ("auto", "httptools"):
        try:
            import httptools  # noqa: F401
        except ImportError:
            if choice == "httptools":
                raise LoadError(
                    f"--http httptools: httptools is not installed; {INSTALL_HINT}"
                ) from None
            return "h11"
        return "httptools"
    return "h11"


def parser_factory(
    http: str, *, max_request_line: int, max_head: int, max_fields: int, max_chunk_line: int
) -> ParserFactory:
    if resolve_http(http) == "httptools":
        from asgiserve.protocols.httptools_parser import HttptoolsParser as parser_class
    else:
        from asgiserve.protocols.h11_parser import H11Parser as parser_class  # type: ignore[assignment]
    factory: ParserFactory = functools.partial(
        parser_class,
        max_request_line=max_request_line,
        max_head=max_head,
        max_fields=max_fields,
        max_chunk_line=max_chunk_line,
    )
    return factory


def resolve_ws(choice: str) -> str:
    """``auto`` means websockets when installed, else ``none`` (upgrades served as HTTP)."""
    if choice in ("auto", "websockets"):
        try:
            import websockets  # noqa: F401
        except ImportError:
            if choice == "websockets":
                raise LoadError(
                    f"--ws websockets: websockets is not installed; {INSTALL_HINT}"
                ) from None
            return "none"
        return "websockets"
    return "none"


def http2_available(enabled: bool) -> bool:
    """HTTP/2 is on when asked for (the default) and the ``h2`` package is installed."""
    if not enabled:
        return False
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loop(choice: str) -> str:
    """``auto`` means uvloop when installed (and supported), else asyncio."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            if choice == "uvloop":
                raise LoadError(f"--loop uvloop: uvloop is not installed; {INSTALL_HINT}") from None
            return "asyncio"
        return "uvloop"
    return "asyncio"


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    if resolve_loop(choice) == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


# -- the edge: middleware in front of the app, TLS ------------------------------------------------


def wrap_app(app: ASGIApp, config: Config) -> ASGIApp:
    """The server's own middleware around the loaded app (in every worker): proxy headers,
    and the ASGI message log at ``--log-level trace``."""
    if config.proxy_headers:
        from asgiserve.middleware.proxy_headers import ProxyHeadersMiddleware, TrustedPeers

        app = ProxyHeadersMiddleware(app, TrustedPeers(config.forwarded_allow_ips))
    if config.log_level == "trace":
        # Outermost, so the log shows the messages as the server sends and receives them.
        from asgiserve.middleware.message_log import MessageLogMiddleware

        app = MessageLogMiddleware(app)
    return app


def alpn_protocols(*, http2: bool = False) -> list[str]:
    """What TLS listeners offer in ALPN (RFC 7301), in our order of preference: ``h2`` first
    when HTTP/2 is on (RFC 9113 section 3.2), then ``http/1.1``."""
    return ["h2", "http/1.1"] if http2 else ["http/1.1"]


def create_ssl_context(tls: TLS, *, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """A server-side SSL context from the ``--ssl-*`` options; :class:`LoadError` names the
    file or option at fault."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    major, minor = parse_tls_version(tls.version)
    context.minimum_version = {
        (1, 0): ssl.TLSVersion.TLSv1,
        (1, 1): ssl.TLSVersion.TLSv1_1,
        (1, 2): ssl.TLSVersion.TLSv1_2,
        (1, 3): ssl.TLSVersion.TLSv1_3,
    }[major, minor]
    # Renegotiation (TLS 1.2 and below) lets a client make us do handshakes for free.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    assert tls.certfile is not None
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, tls.keyfile_password)
    except FileNotFoundError:
        # OpenSSL does not say which of the two files it could not find.
        option, missing = (
            ("--ssl-certfile", tls.certfile)
            if not os.path.isfile(tls.certfile)
            else ("--ssl-keyfile", tls.keyfile)
        )
        raise LoadError(f"{option}: no such file {missing!r}") from None
    except (OSError, ssl.SSLError) as exc:
        raise LoadError(
            f"Cannot load the certificate {tls.certfile!r}"
            + (f" with the key {tls.keyfile!r}" if tls.keyfile else "")
            + f": {exc} (wrong file, or a wrong or missing --ssl-keyfile-password?)"
        ) from None
    context.verify_mode = (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED)[tls.cert_reqs]
    if tls.ca_certs is not None:
        try:
            if os.path.isdir(tls.ca_certs):
                context.load_verify_locations(capath=tls.ca_certs)
            else:
                context.load_verify_locations(cafile=tls.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise LoadError(f"Cannot load --ssl-ca-certs {tls.ca_certs!r}: {exc}") from None
    if tls.ciphers is not None:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise LoadError(f"--ssl-ciphers {tls.ciphers!r}: no cipher matches") from None
    context.set_alpn_protocols(list(alpn))
    return context


def load_tls(tls: TLS, *, http2: bool = False) -> tuple[ssl.SSLContext, TLSInfo] | None:
    """The SSL context and the per-listener facts of the ``tls`` extension; None without TLS."""
    if not tls.enabled:
        return None
    from asgiserve.transport.tls import TLSInfo, server_cert_pem

    context = create_ssl_context(tls, alpn=alpn_protocols(http2=http2))
    assert tls.certfile is not None
    try:
        with open(tls.certfile, encoding="latin-1") as file:
            server_cert = server_cert_pem(file.read())
    except OSError:
        server_cert = None
    return context, TLSInfo.from_context(context, server_cert)
