"""Creating the listening sockets: TCP (IPv4/IPv6), a unix socket, or an inherited fd."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

__all__ = ["BindError", "bind_fd", "bind_tcp", "bind_unix", "describe"]


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
