"""The framework app of the benchmark suite: FastAPI with a pydantic model and a path parameter.

The raw apps of ``benchmarks/apps.py`` compare servers; this one shows what a server's speed is
worth to a typical framework app, where routing, validation and serialisation run per request:
``GET /items/{item_id}`` validates the path parameter as an int and returns a pydantic model
as JSON (``benchmarks.fastapi_app:app``, ``GET /items/42``).
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.apps import ITEM_FIELDS


class Item(BaseModel):
    id: int
    name: str
    price: float
    tags: list[str]


app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> Item:
    return Item(id=item_id, **ITEM_FIELDS)  # type: ignore[arg-type]
