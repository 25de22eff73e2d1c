"""The ASGI layer: the only place ASGI messages are built and checked.

It knows nothing about wire protocols: the HTTP cycle talks to a
:class:`~asgiserve.asgi.http.ResponseSink` that a connection implements for its protocol.
"""
