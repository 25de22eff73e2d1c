"""Exceptions the ASGI layer raises into applications.

Kept apart from the cycles so that they stay ordinary Python classes when the hot modules are
compiled (mypyc cannot compile a subclass of ``OSError``).
"""

from __future__ import annotations

__all__ = ["ClientDisconnected"]


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away (ASGI HTTP spec 2.4)."""
