"""A small FastAPI app: run it with `asgiserve examples.fastapi_app:app`, then open /docs.

HTTP at /items, a WebSocket echo at /ws; FastAPI itself answers lifespan and any other path.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

app = FastAPI(title="Items")


class ItemIn(BaseModel):
    name: str
    price: float
    in_stock: bool = True


class Item(ItemIn):
    id: int


items: dict[int, Item] = {}  # in memory: gone when the process exits


@app.post("/items", status_code=201)
async def create_item(item: ItemIn) -> Item:
    created = Item(id=max(items, default=0) + 1, **item.model_dump())
    items[created.id] = created
    return created


@app.get("/items")
async def list_items(q: str | None = None, limit: int = 10) -> list[Item]:
    found = [item for item in items.values() if q is None or q.lower() in item.name.lower()]
    return found[:limit]


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> Item:
    if item_id not in items:
        raise HTTPException(status_code=404, detail="Item not found")
    return items[item_id]


@app.put("/items/{item_id}")
async def replace_item(item_id: int, item: ItemIn) -> Item:
    if item_id not in items:
        raise HTTPException(status_code=404, detail="Item not found")
    items[item_id] = Item(id=item_id, **item.model_dump())
    return items[item_id]


@app.delete("/items/{item_id}", status_code=204)
async def delete_item(item_id: int) -> None:
    if items.pop(item_id, None) is None:
        raise HTTPException(status_code=404, detail="Item not found")


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
