"""A FastAPI app exercising what real apps lean on, for tests/e2e/test_frameworks.py.

Serve it with ``python -m asgiserve tests.e2e.apps.fastapi_app:app`` from the repo root.
Set ``E2E_LIFESPAN_LOG`` to a file path to have lifespan startup and shutdown recorded there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import BackgroundTasks, FastAPI, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware

ALLOWED_ORIGIN = "https://allowed.example"
STREAM_CHUNKS = 100


def _record_lifespan(event: str) -> None:
    path = os.environ.get("E2E_LIFESPAN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(event + "\n")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    _record_lifespan("startup")
    # Everything per-process lives in the lifespan state; requests see it as request.state.
    yield {"framework": "fastapi", "items": {}, "jobs": {}, "gates": {}}
    _record_lifespan("shutdown")


app = FastAPI(title="asgiserve e2e", lifespan=lifespan)
app.add_middleware(SessionMiddleware, secret_key="e2e-test-secret-not-for-production")
app.add_middleware(
    CORSMiddleware,
    allow_origins=[ALLOWED_ORIGIN],
    allow_methods=["GET", "POST"],
    allow_headers=["content-type"],
)


class ItemIn(BaseModel):
    name: str
    price: float
    tags: list[str] = []


class Item(ItemIn):
    id: int


class Login(BaseModel):
    user: str


@app.get("/lifespan")
async def lifespan_state(request: Request) -> dict[str, str]:
    return {"framework": request.state.framework}


@app.post("/items", status_code=201)
async def create_item(item: ItemIn, request: Request) -> Item:
    items: dict[int, Item] = request.state.items
    created = Item(id=len(items) + 1, **item.model_dump())
    items[created.id] = created
    return created


@app.get("/items/{item_id}")
async def read_item(item_id: int, request: Request) -> Item:
    items: dict[int, Item] = request.state.items
    if item_id not in items:
        raise HTTPException(status_code=404, detail="item not found")
    return items[item_id]


@app.get("/search")
async def search(
    q: str | None = None, tag: Annotated[list[str] | None, Query()] = None
) -> dict[str, Any]:
    return {"q": q, "tags": tag or []}


@app.post("/login")
async def login(body: Login, request: Request) -> dict[str, str]:
    request.session["user"] = body.user
    return {"logged_in": body.user}


@app.get("/me")
async def me(request: Request) -> dict[str, str]:
    user = request.session.get("user")
    if user is None:
        raise HTTPException(status_code=401, detail="not logged in")
    return {"user": user}


@app.post("/upload")
async def upload(file: UploadFile, description: Annotated[str, Form()]) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    while chunk := await file.read(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return {
        "filename": file.filename,
        "size": size,
        "sha256": digest.hexdigest(),
        "description": description,
    }


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def numbers() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i:03d}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(numbers(), media_type="text/plain")


async def finish_job(jobs: dict[str, str], gate: asyncio.Event, job_id: str) -> None:
    await asyncio.wait_for(gate.wait(), timeout=10)
    jobs[job_id] = "done"


@app.post("/jobs/{job_id}", status_code=202)
async def start_job(job_id: str, request: Request, tasks: BackgroundTasks) -> dict[str, str]:
    gate = request.state.gates[job_id] = asyncio.Event()
    request.state.jobs[job_id] = "pending"
    tasks.add_task(finish_job, request.state.jobs, gate, job_id)
    return {"job": job_id, "status": "pending"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request) -> dict[str, str]:
    return {"job": job_id, "status": request.state.jobs.get(job_id, "unknown")}


@app.post("/jobs/{job_id}/release", status_code=204)
async def release_job(job_id: str, request: Request) -> Response:
    request.state.gates[job_id].set()
    return Response(status_code=204)


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom from /boom")


@app.get("/client")
async def client_address(request: Request) -> dict[str, Any]:
    assert request.client is not None
    return {"host": request.client.host, "port": request.client.port}
