"""The smallest ASGI app: run it with `asgiserve examples.hello:app`.

It answers every kind of scope a server sends: lifespan (startup and shutdown), HTTP (a
greeting) and WebSocket (an echo; try `python -m websockets ws://127.0.0.1:8000/`).
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await websocket_echo(receive, send)
    elif scope["type"] == "http":
        body = b"Hello, world!"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    # Any other scope type is one this app does not know: ASGI says to ignore it by returning.


async def websocket_echo(receive, send):
    """Accept, then send every message back until the client leaves."""
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return
