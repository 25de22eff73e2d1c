"""Creating the listening sockets: TCP (IPv4/IPv6), a unix socket, or an inherited fd.

A server may listen in several places at once. :func:`plan_listeners` turns the options
(``--host/--port``, ``--uds``, ``--fd`` and any number of ``--bind``) into a list of
:class:`Listener` descriptions, :func:`bind_listeners` creates the sockets (all or none), and
:func:`release_listeners` closes them and removes the unix socket files it created. A supervisor
binds once and hands the same sockets to every worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BindError",
    "Listener",
    "bind_fd",
    "bind_listeners",
    "bind_tcp",
    "bind_unix",
    "describe",
    "parse_bind",
    "plan_listeners",
    "release_listeners",
]


class BindError(OSError):
    """A listening socket could not be created; the message is for the user."""


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    host_text, port_number = str(address[0]), int(address[1])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BindError(
            f"cannot bind to {_format(family, host_text, port_number)}: {exc.strerror}"
        ) from exc
    sock.setblocking(False)
    return sock


def bind_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        # A socket file left behind by a previous run would make bind fail; anything that is
        # not a socket we refuse to delete.
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - any local user may connect, as with a TCP port
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind to unix socket {path!r}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def bind_fd(fd: int) -> socket.socket:
    """Adopt an already-bound socket, e.g. from systemd socket activation."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"file descriptor {fd} is not a usable socket: {exc.strerror}") from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(f"file descriptor {fd} is not a stream socket")
    sock.setblocking(False)
    return sock


def _format(family: int, host: str, port: int) -> str:
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """A URL-ish description of where a socket listens, for the startup line."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    return f"{scheme}://{_format(sock.family, address[0], address[1])}"


# -- several listeners ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """Where to listen: a TCP address, a unix socket path, or an inherited file descriptor."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(address: str) -> Listener:
    """Parse a ``--bind`` value: ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH`` or ``fd://N``.

    Raises :class:`ValueError` with a message for the user.
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError("expected unix:PATH")
        return Listener("unix", path=path)
    if address.startswith("fd://"):
        number = address[len("fd://") :]
        if not number.isdigit():
            raise ValueError("expected fd://N with N a file descriptor number")
        return Listener("fd", fd=int(number))
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":") or ":" not in host:
            raise ValueError("expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host or ":" in host:
            # A bare IPv6 address is ambiguous ("::1:8000"): RFC 3986 brackets are required.
            raise ValueError("expected HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port_text!r}")
    return Listener("tcp", host=host, port=int(port_text))


def plan_listeners(
    *, host: str, port: int, uds: str | None, fd: int | None, binds: Sequence[str]
) -> list[Listener]:
    """Every listener the options ask for. ``host``/``port`` count only when neither ``uds``,
    ``fd`` nor any ``bind`` is given (they have defaults, so they cannot mean "also here")."""
    listeners = [parse_bind(address) for address in binds]
    if uds:
        listeners.insert(0, Listener("unix", path=uds))
    if fd is not None:
        listeners.insert(0, Listener("fd", fd=fd))
    return listeners or [Listener("tcp", host=host, port=port)]


def bind_listeners(listeners: Sequence[Listener]) -> list[socket.socket]:
    """Create a socket for each listener; if one fails, close those already made and raise."""
    sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            if listener.kind == "fd":
                sockets.append(bind_fd(listener.fd))
            elif listener.kind == "unix":
                sockets.append(bind_unix(listener.path))
            else:
                sockets.append(bind_tcp(listener.host, listener.port))
    except BindError:
        release_listeners(sockets, listeners[: len(sockets)])
        raise
    return sockets


def release_listeners(sockets: Sequence[socket.socket], listeners: Sequence[Listener]) -> None:
    """Close what :func:`bind_listeners` made and remove its unix socket files. Inherited
    descriptors are left open: they belong to whoever passed them (systemd, a test)."""
    for sock, listener in zip(sockets, listeners, strict=True):
        if listener.kind == "fd":
            continue
        if listener.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(listener.path)
        sock.close()
