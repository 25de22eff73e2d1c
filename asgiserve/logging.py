"""Log setup and the access log.

Three loggers: ``asgiserve.error`` (server events and app tracebacks; connections opened and
closed at trace level), ``asgiserve.access`` (one line per response) and ``asgiserve.asgi``
(ASGI messages, at trace level only). They write to stderr, as text with a level prefix
(coloured on a TTY, or as ``--use-colors`` says) or as JSON lines (``--log-format json``);
``--log-config`` applies the user's own logging configuration instead (our loggers then
propagate to the user's handlers).

The access log line
-------------------
``--access-log-format`` is text with fields in braces (see :data:`ACCESS_LOG_FIELDS`):
``{client} - "{method} {target} HTTP/{protocol}" {status} {bytes} {duration_ms}ms`` (the
default). ``{Name}i`` is a request header, ``{Name}o`` a response header (``-`` when absent,
repeated fields joined with ``", "``); ``{{`` and ``}}`` are literal braces. The format is
compiled once into a ``%``-template and a tuple of field getters; each response makes one
:class:`logging.LogRecord` whose ``args`` are the field values, so a JSON formatter can emit the
same fields by name (``record.access_fields``) without parsing the text. Text that comes from
the request is escaped (:func:`escape`): nobody can forge a log line with a CR/LF.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import logging.config
import os
import sys
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring as quote
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asgiserve.asgi.types import Scope
    from asgiserve.config import Config

__all__ = [
    "ACCESS_LOG_FIELDS",
    "DEFAULT_ACCESS_LOG_FORMAT",
    "TRACE",
    "AccessLog",
    "AccessLogFormatError",
    "JSONFormatter",
    "LogConfigError",
    "compile_access_format",
    "configure_logging",
    "configure_logging_for",
    "escape",
    "load_log_config",
    "logging_configured",
    "make_access_log",
]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
_COLOURS = {
    logging.CRITICAL: "\033[1;31m",
    logging.ERROR: "\033[31m",
    logging.WARNING: "\033[33m",
    logging.INFO: "\033[32m",
    logging.DEBUG: "\033[34m",
    TRACE: "\033[34m",
}


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our default handler, for both loggers: stderr, with access log lines written once per
    event loop iteration instead of once each.

    Under load a loop iteration finishes many responses; writing their lines together saves a
    ``write(2)`` per request (stderr is unbuffered or line-buffered). An error line, or an
    access line logged outside an event loop, is written at once, after any pending access
    lines, so the order of lines is kept. Pending lines are also written by ``flush()``,
    which ``logging.shutdown()`` calls at exit.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.flush_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.name != "asgiserve.access" or not self._defer(line):
                self._write_now(line)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)

    def write_access(self, line: str) -> None:
        """An access log line formatted by :func:`make_access_log` (our own format)."""
        with self.lock:  # type: ignore[union-attr]
            if not self._defer(line):
                self._write_now(line)

    def _write_now(self, line: str) -> None:
        """Write ``line`` after any pending lines, and flush."""
        pending = self.pending
        if pending:
            pending.append(line + self.terminator)
            line = "".join(pending)
            pending.clear()
        else:
            line += self.terminator
        self.stream.write(line)
        self.flush()

    def _defer(self, line: str) -> bool:
        """Queue the line until the end of this loop iteration; False outside a loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self.pending.append(line + self.terminator)
        if self.flush_loop is not loop:
            self.flush_loop = loop
            loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self.flush_loop = None
            pending = self.pending
            if pending:
                data = "".join(pending)
                pending.clear()
                self.stream.write(data)
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()


class _LevelFormatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__("%(levelprefix)s %(message)s")
        self.colour = colour

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = record.levelname + ":"
        if self.colour:
            name = f"{_COLOURS.get(record.levelno, '')}{name}\033[0m"
        record.__dict__["levelprefix"] = name.ljust(9 + (9 if self.colour else 0))
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the access log's fields by name when the record is an access log line, and ``exc_info``
    (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        names = getattr(record, "access_fields", None)
        if names is not None and isinstance(record.args, tuple):
            data.update(zip(names, record.args, strict=False))
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        return _JSON.encode(data)


#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)
_iso_second: list[Any] = [-1, ""]


def iso_time(timestamp: float) -> str:
    """``2026-01-01T12:00:00.123Z``; the part up to the second is formatted once a second."""
    second = int(timestamp)
    cache = _iso_second
    if cache[0] != second:
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cache[0] = second
    return f"{cache[1]}.{int((timestamp - second) * 1000):03d}Z"


class LogConfigError(ValueError):
    """``--log-config`` names a file that cannot be read or applied; the message says why."""


def load_log_config(path: str) -> None:
    """Apply a logging configuration file: JSON or YAML (``logging.config.dictConfig``), or
    INI (``logging.config.fileConfig``), chosen by the file extension.

    Loggers that exist already (ours among them) stay enabled unless the file says otherwise:
    ``disable_existing_loggers`` defaults to false here, not to the stdlib's true.
    """
    extension = os.path.splitext(path)[1].lower()
    try:
        if extension in (".json", ".yaml", ".yml"):
            with open(path, encoding="utf-8") as file:
                text = file.read()
            if extension == ".json":
                config = json.loads(text)
            else:
                try:
                    # PyYAML is optional (and ships no type hints): imported by name.
                    yaml = importlib.import_module("yaml")
                except ImportError:
                    raise LogConfigError(
                        f"--log-config {path}: YAML needs PyYAML (pip install pyyaml), "
                        "or use a .json or .ini file"
                    ) from None
                config = yaml.safe_load(text)
            if not isinstance(config, dict):
                raise LogConfigError(f"--log-config {path}: expected a mapping (dictConfig)")
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            if not os.path.isfile(path):
                raise LogConfigError(f"--log-config {path}: no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except LogConfigError:
        raise
    except OSError as exc:
        raise LogConfigError(f"--log-config {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # json/yaml syntax errors, and dictConfig/fileConfig's ValueError/KeyError on a
        # configuration that names an unknown handler, class or level.
        raise LogConfigError(f"--log-config {path}: {exc}") from exc


#: The server's loggers: events and tracebacks, one line per response, ASGI messages (trace).
LOGGERS = ("asgiserve.error", "asgiserve.access", "asgiserve.asgi")
_configured: list[bool] = [False]


def configure_logging(
    level: str,
    *,
    access_log: bool,
    log_format: str = "text",
    log_config: str | None = None,
    use_colors: bool | None = None,
) -> None:
    """Set up the server's loggers at ``level``: our stderr handler, or, with ``log_config``,
    the user's logging configuration instead of ours (as uvicorn does).

    With ``log_config`` our loggers get no handler of ours and propagate, so a configuration
    that only sets up the root logger receives every line, the access log included; one that
    names our loggers sets their handlers, levels and ``propagate`` itself.
    """
    numeric = _LEVELS[level]
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.setLevel(numeric)
    if log_config is None:
        handler = _StreamHandler(sys.stderr)
        formatter: logging.Formatter
        if log_format == "json":
            formatter = JSONFormatter()
        else:
            colour = sys.stderr.isatty() if use_colors is None else use_colors
            formatter = _LevelFormatter(colour=colour)
        handler.setFormatter(formatter)
        for logger in loggers:
            logger.handlers[:] = [handler]
            logger.propagate = False
    else:
        for logger in loggers:
            logger.handlers[:] = []
            logger.propagate = True
        load_log_config(log_config)
    if not access_log:
        logging.getLogger("asgiserve.access").setLevel(logging.CRITICAL + 1)
    _configured[0] = True


def configure_logging_for(config: Config) -> None:
    """:func:`configure_logging` with ``config``'s logging options."""
    configure_logging(
        config.log_level,
        access_log=config.access_log,
        log_format=config.log_format,
        log_config=config.log_config,
        use_colors=config.use_colors,
    )


def logging_configured() -> bool:
    """True once :func:`configure_logging` ran in this process, or when the program set up
    logging itself (a handler on the root logger or on one of ours, or a level on ours):
    an embedded server then leaves logging alone."""
    if _configured[0] or logging.getLogger().handlers:
        return True
    return any(
        logger.handlers or logger.level != logging.NOTSET or not logger.propagate
        for logger in map(logging.getLogger, ("asgiserve", *LOGGERS))
    )


_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def escape(text: str) -> str:
    """Make request-controlled text safe to log: no control characters (no log injection)."""
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES[ord(c)] if ord(c) in _ESCAPES else (c if c.isprintable() else repr(c)[1:-1])
        for c in text
    )


# -- the access log ----------------------------------------------------------------------------

Headers = Sequence[tuple[bytes, bytes]]


class AccessLog(Protocol):
    """The callback connections call once per response (or WebSocket handshake)."""

    def __call__(
        self,
        scope: Scope,
        status: int,
        body_bytes: int,
        started_at: float,
        response_headers: Headers = (),
        /,
    ) -> None: ...


#: The default line; the same as before the format became configurable.
DEFAULT_ACCESS_LOG_FORMAT = (
    '{client} - "{method} {target} HTTP/{protocol}" {status} {bytes} {duration_ms}ms'
)


class AccessLogFormatError(ValueError):
    """An ``--access-log-format`` that cannot be compiled; the message says where."""


class _Request:
    """What a field getter sees: the callback's arguments, plus the clock's reading."""

    __slots__ = ("body_bytes", "duration", "response_headers", "scope", "status")

    def __init__(
        self, scope: Scope, status: int, body_bytes: int, duration: float, headers: Headers
    ) -> None:
        self.scope = scope
        self.status = status
        self.body_bytes = body_bytes
        self.duration = duration
        self.response_headers = headers


def _client(r: _Request) -> str:
    client = r.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _client_host(r: _Request) -> str:
    client = r.scope.get("client")
    return str(client[0]) if client else "-"


def _client_port(r: _Request) -> str:
    client = r.scope.get("client")
    return str(client[1]) if client else "-"


def _path(r: _Request) -> str:
    return escape(r.scope["raw_path"].decode("latin-1"))


def _query(r: _Request) -> str:
    return escape(r.scope["query_string"].decode("latin-1"))


def _target(r: _Request) -> str:
    scope = r.scope
    target = scope["raw_path"].decode("latin-1")
    query = scope["query_string"]
    if query:
        target += "?" + query.decode("latin-1")
    return escape(target)


#: Field name -> (getter, %-conversion, description). The conversion keeps numbers numbers in
#: JSON output; everything else is text.
ACCESS_LOG_FIELDS: dict[str, tuple[Callable[[_Request], Any], str, str]] = {
    "client": (_client, "%s", "client address as host:port ('-' when unknown)"),
    "client_host": (_client_host, "%s", "client host (IP address)"),
    "client_port": (_client_port, "%s", "client port"),
    "method": (lambda r: r.scope.get("method", "GET"), "%s", "request method"),
    "scheme": (lambda r: r.scope["scheme"], "%s", "http, https, ws or wss"),
    "path": (_path, "%s", "request path as sent (percent-encoded)"),
    "query": (_query, "%s", "query string without '?'"),
    "target": (_target, "%s", "path and '?query' as sent"),
    "protocol": (lambda r: r.scope["http_version"], "%s", "HTTP version: 1.0, 1.1 or 2"),
    "status": (lambda r: r.status, "%d", "response status"),
    "bytes": (lambda r: r.body_bytes, "%d", "response body bytes"),
    "duration_ms": (
        lambda r: round(r.duration * 1000.0, 1),
        "%.1f",
        "milliseconds to the response",
    ),
    "pid": (lambda r: os.getpid(), "%d", "the serving process's PID"),
}


def _request_header(name: bytes) -> Callable[[_Request], str]:
    def get(r: _Request) -> str:
        values = [v for k, v in r.scope["headers"] if k == name]
        return escape(b", ".join(values).decode("latin-1")) if values else "-"

    return get


def _response_header(name: bytes) -> Callable[[_Request], str]:
    def get(r: _Request) -> str:
        values = [v for k, v in r.response_headers if k.lower() == name]
        return escape(b", ".join(values).decode("latin-1")) if values else "-"

    return get


class CompiledFormat:
    """An access log format compiled once: a ``%``-template, one getter per field, and the
    fields' names (JSON keys: the field name, ``request.<header>``, ``response.<header>``)."""

    __slots__ = ("conversions", "getters", "names", "template", "uses_response_headers")

    def __init__(
        self,
        template: str,
        getters: tuple[Callable[[_Request], Any], ...],
        names: tuple[str, ...],
        conversions: tuple[str, ...],
    ) -> None:
        self.template = template
        self.getters = getters
        self.names = names
        #: Each field's %-conversion: ``%s`` for text, ``%d``/``%.1f`` for numbers.
        self.conversions = conversions
        self.uses_response_headers = any(n.startswith("response.") for n in names)


def compile_access_format(fmt: str) -> CompiledFormat:
    """Compile ``--access-log-format``; raise :class:`AccessLogFormatError` on a bad one."""
    template: list[str] = []
    getters: list[Callable[[_Request], Any]] = []
    names: list[str] = []
    conversions: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        char = fmt[i]
        if char == "{":
            if fmt.startswith("{{", i):
                template.append("{")
                i += 2
                continue
            end = fmt.find("}", i)
            if end < 0:
                raise AccessLogFormatError(f"unclosed '{{' at position {i} in {fmt!r}")
            name = fmt[i + 1 : end]
            suffix = fmt[end + 1 : end + 2]
            if name in ACCESS_LOG_FIELDS:
                getter, conversion, _ = ACCESS_LOG_FIELDS[name]
                getters.append(getter)
                template.append(conversion)
                conversions.append(conversion)
                names.append(name)
                i = end + 1
            elif suffix in ("i", "o") and name and _is_token(name):
                header = name.lower()
                if suffix == "i":
                    getters.append(_request_header(header.encode("latin-1")))
                    names.append(f"request.{header}")
                else:
                    getters.append(_response_header(header.encode("latin-1")))
                    names.append(f"response.{header}")
                template.append("%s")
                conversions.append("%s")
                i = end + 2
            else:
                raise AccessLogFormatError(
                    f"unknown field {{{name}}}: use one of "
                    f"{', '.join('{' + f + '}' for f in ACCESS_LOG_FIELDS)}, "
                    "or {Header-Name}i / {Header-Name}o for a request / response header"
                )
        elif char == "}":
            if not fmt.startswith("}}", i):
                raise AccessLogFormatError(f"single '}}' at position {i}: write '}}}}'")
            template.append("}")
            i += 2
        else:
            template.append("%%" if char == "%" else char)
            i += 1
    return CompiledFormat("".join(template), tuple(getters), tuple(names), tuple(conversions))


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(name: str) -> bool:
    """RFC 9110 section 5.1: a field name is a token."""
    return all(c in _TOKEN_CHARS for c in name)


def _default_fields(scope: Scope, status: int, body_bytes: int, duration: float) -> tuple[Any, ...]:
    """The default format's values, in one function rather than seven getters: the default
    is what almost everyone runs, so it gets the short path."""
    client = scope.get("client")
    target = scope["raw_path"].decode("latin-1")
    query = scope["query_string"]
    if query:
        target += "?" + query.decode("latin-1")
    return (
        f"{client[0]}:{client[1]}" if client else "-",
        scope.get("method", "GET"),
        target if target.isprintable() else escape(target),
        scope["http_version"],
        status,
        body_bytes,
        round(duration * 1000.0, 1),  # the same number in text and in JSON
    )


def _own_handler(logger: logging.Logger) -> tuple[_StreamHandler, str | None] | None:
    """Our default setup on ``logger``, untouched by ``--log-config``: its handler and the
    prefix its text formatter puts before a message (``"INFO:     "``), None for our JSON
    formatter; else None."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate or logger.disabled:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not _StreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    if type(formatter) is JSONFormatter:
        return handler, None
    if type(formatter) is not _LevelFormatter:
        return None
    mark = "\x00message\x00"
    probe = logging.LogRecord(logger.name, logging.INFO, "", 0, mark, None, None)
    text = formatter.format(probe)
    if not text.endswith(mark):
        return None
    return handler, text[: -len(mark)]


def make_access_log(
    clock: Callable[[], float], fmt: str = DEFAULT_ACCESS_LOG_FORMAT
) -> AccessLog | None:
    """An access-log callback for connections, or None when access logging is off (so that
    connections pay nothing for it).

    Two ways to write a line:

    * With our own text setup (no ``--log-config``, ``--log-format text``), the line is
      formatted here and handed straight to our handler, which writes the lines of one event
      loop iteration together. This is what makes access logging cheap: the logging
      machinery (``Logger.info``'s ``findCaller`` stack walk, ``LogRecord.__init__``, filters,
      handler locks, two formatter passes) cost more than the request itself.
    * Otherwise each line is a real :class:`logging.LogRecord` passed to the logger's
      handlers, so ``--log-config`` handlers, filters and formatters (and the JSON formatter)
      see the usual attributes. It is made the cheap way too: the thread, process and file
      name are worked out once, in a prototype whose attributes each record copies.

    The logging setup is read when the callback is made (after ``configure_logging``); if it
    changes afterwards, the next line notices and takes the second way.
    """
    logger = logging.getLogger("asgiserve.access")
    if not logger.isEnabledFor(logging.INFO):
        return None
    compiled = compile_access_format(fmt)
    template, getters, names = compiled.template, compiled.getters, compiled.names
    default = template == _DEFAULT_TEMPLATE and names == _DEFAULT_NAMES
    prototype = logging.LogRecord(logger.name, logging.INFO, "", 0, template, None, None)
    prototype.__dict__["access_fields"] = names
    if sys.version_info >= (3, 12):
        prototype.__dict__["taskName"] = None  # not the task that built the prototype
    fields = prototype.__dict__
    record_class = logging.LogRecord
    new_record = object.__new__
    wall_clock = time.time
    started = float(getattr(logging, "_startTime", wall_clock()))
    handle = logger.handle
    own = _own_handler(logger)
    handlers = logger.handlers
    own_handler = own[0] if own is not None else None
    own_formatter = own_handler.formatter if own_handler is not None else None
    prefix = own[1] if own is not None else None
    # The JSON line as a %-template too: strings go through the json module's C escaper,
    # numbers straight in; three times cheaper than building a dict and encoding it.
    json_template = (
        '{"time": "%s", "level": "INFO", "logger": "asgiserve.access", "message": %s'
        + "".join(
            f", {quote(name).replace('%', '%%')}: {conversion}"
            for name, conversion in zip(names, compiled.conversions, strict=True)
        )
        + "}"
    )
    is_text = tuple(conversion == "%s" for conversion in compiled.conversions)

    def log_access(
        scope: Scope,
        status: int,
        body_bytes: int,
        started_at: float,
        response_headers: Headers = (),
        /,
    ) -> None:
        duration = clock() - started_at
        if default:
            args = _default_fields(scope, status, body_bytes, duration)
        else:
            request = _Request(scope, status, body_bytes, duration, response_headers)
            args = tuple([g(request) for g in getters])
        if (
            own_handler is not None
            and len(handlers) == 1
            and handlers[0] is own_handler
            and own_handler.formatter is own_formatter
            and not logger.disabled
        ):
            if prefix is not None:
                own_handler.write_access(prefix + template % args)
            else:
                # What JSONFormatter would make of the record, without the record.
                own_handler.write_access(
                    json_template
                    % (
                        iso_time(wall_clock()),
                        quote(template % args),
                        *[quote(a) if t else a for a, t in zip(args, is_text, strict=True)],
                    )
                )
            return
        record = new_record(record_class)
        attributes = record.__dict__
        attributes.update(fields)
        now = wall_clock()
        attributes["created"] = now
        attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
        attributes["relativeCreated"] = (now - started) * 1000.0
        attributes["args"] = args
        handle(record)

    return log_access


_DEFAULT_COMPILED = compile_access_format(DEFAULT_ACCESS_LOG_FORMAT)
_DEFAULT_TEMPLATE = _DEFAULT_COMPILED.template
_DEFAULT_NAMES = _DEFAULT_COMPILED.names
