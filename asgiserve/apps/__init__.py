"""ASGI applications shipped with the server."""
