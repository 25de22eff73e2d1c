"""A Starlette app exercising what real apps lean on, for tests/e2e/test_frameworks.py.

Serve it with ``python -m asgiserve tests.e2e.apps.starlette_app:app`` from the repo root.
Set ``E2E_LIFESPAN_LOG`` to a file path to have lifespan startup and shutdown recorded there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ALLOWED_ORIGIN = "https://allowed.example"
STREAM_CHUNKS = 100


def _record_lifespan(event: str) -> None:
    path = os.environ.get("E2E_LIFESPAN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(event + "\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    _record_lifespan("startup")
    # Everything per-process lives in the lifespan state; requests see it as request.state.
    yield {"framework": "starlette", "items": {}, "jobs": {}, "gates": {}}
    _record_lifespan("shutdown")


async def lifespan_state(request: Request) -> JSONResponse:
    return JSONResponse({"framework": request.state.framework})


async def create_item(request: Request) -> JSONResponse:
    try:
        data = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
    if not isinstance(data, dict):
        return JSONResponse({"detail": "expected a JSON object"}, status_code=400)
    items: dict[int, dict[str, Any]] = request.state.items
    item = {"id": len(items) + 1, **data}
    items[item["id"]] = item
    return JSONResponse(item, status_code=201)


async def read_item(request: Request) -> JSONResponse:
    item_id: int = request.path_params["item_id"]  # converted by the {item_id:int} route
    item = request.state.items.get(item_id)
    if item is None:
        return JSONResponse({"detail": "item not found"}, status_code=404)
    return JSONResponse(item)


async def search(request: Request) -> JSONResponse:
    return JSONResponse(
        {"q": request.query_params.get("q"), "tags": request.query_params.getlist("tag")}
    )


async def login(request: Request) -> JSONResponse:
    data = await request.json()
    request.session["user"] = data["user"]
    return JSONResponse({"logged_in": data["user"]})


async def me(request: Request) -> JSONResponse:
    user = request.session.get("user")
    if user is None:
        return JSONResponse({"detail": "not logged in"}, status_code=401)
    return JSONResponse({"user": user})


async def upload(request: Request) -> JSONResponse:
    async with request.form() as form:
        file = form["file"]
        assert isinstance(file, UploadFile)
        digest = hashlib.sha256()
        size = 0
        while chunk := await file.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse(
            {
                "filename": file.filename,
                "size": size,
                "sha256": digest.hexdigest(),
                "description": form["description"],
            }
        )


async def stream(request: Request) -> StreamingResponse:
    async def numbers() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i:03d}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(numbers(), media_type="text/plain")


async def finish_job(jobs: dict[str, str], gate: asyncio.Event, job_id: str) -> None:
    await asyncio.wait_for(gate.wait(), timeout=10)
    jobs[job_id] = "done"


async def start_job(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    gate = request.state.gates[job_id] = asyncio.Event()
    request.state.jobs[job_id] = "pending"
    task = BackgroundTask(finish_job, request.state.jobs, gate, job_id)
    return JSONResponse({"job": job_id, "status": "pending"}, status_code=202, background=task)


async def job_status(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    return JSONResponse({"job": job_id, "status": request.state.jobs.get(job_id, "unknown")})


async def release_job(request: Request) -> Response:
    request.state.gates[request.path_params["job_id"]].set()
    return Response(status_code=204)


async def boom(request: Request) -> Response:
    raise RuntimeError("boom from /boom")


async def client_address(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse({"host": request.client.host, "port": request.client.port})


app = Starlette(
    routes=[
        Route("/lifespan", lifespan_state),
        Route("/items", create_item, methods=["POST"]),
        Route("/items/{item_id:int}", read_item),
        Route("/search", search),
        Route("/login", login, methods=["POST"]),
        Route("/me", me),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/jobs/{job_id}", start_job, methods=["POST"]),
        Route("/jobs/{job_id}", job_status, methods=["GET"]),
        Route("/jobs/{job_id}/release", release_job, methods=["POST"]),
        Route("/boom", boom),
        Route("/client", client_address),
    ],
    middleware=[
        Middleware(
            CORSMiddleware,
            allow_origins=[ALLOWED_ORIGIN],
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
        ),
        Middleware(SessionMiddleware, secret_key="e2e-test-secret-not-for-production"),
    ],
    lifespan=lifespan,
)
