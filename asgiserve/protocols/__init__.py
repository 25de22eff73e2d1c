"""Sans-I/O protocol cores.

Nothing in this package imports asyncio, the ASGI layer or the server configuration: each core
takes bytes and plain keyword-only limits, reports what it parsed through a narrow sink
interface, and raises :class:`~asgiserve.protocols.errors.ProtocolError` (which carries the HTTP
status the peer should get) when the peer breaks the protocol.
"""
