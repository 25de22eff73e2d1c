"""ASGI middleware the server can put in front of an app."""
