"""``/v1/images``: list, pull (Server-Sent Events progress) and delete images in the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from sandkasten.api.deps import Manager, require_api_key
from sandkasten.api.errors import CONFLICT, NOT_FOUND, Responses, responses
from sandkasten.api.models import NAME_PATTERN, ImageList, ImageOut, Ok, PullRequest, sse_schema
from sandkasten.api.routers.exec import sse
from sandkasten.errors import ConflictError, SandkastenError, with_code

router = APIRouter(prefix="/v1/images", tags=["images"], dependencies=[Depends(require_api_key)])

PULL_DOC: Responses = {
    200: {
        "description": "Server-Sent Events: `progress` per layer, then `done` "
        "(the image, as in GET /v1/images) or `error` {error, code}",
        "content": {"text/event-stream": {"schema": sse_schema(["progress", "done", "error"])}},
    }
}


@router.get(
    "",
    response_model=ImageList,
    summary="List images (like `sandkasten image list`)",
    responses=responses(),
)
async def list_images(m: Manager) -> ImageList:
    images = await anyio.to_thread.run_sync(m.images.list)
    return ImageList(images=[ImageOut(**i) for i in images])


@router.post(
    "/pull",
    response_class=StreamingResponse,
    summary="Pull an image from a registry",
    responses={**PULL_DOC, **responses()},
)
async def pull(m: Manager, body: PullRequest) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def progress(ev: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("progress", ev))

    def run() -> None:
        try:
            rec = m.images.pull(body.ref, name=body.name, platform=body.platform, progress=progress)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", rec))
        except SandkastenError as e:
            loop.call_soon_threadsafe(
                queue.put_nowait, ("error", {"error": e.message, "code": e.code})
            )
        except Exception as e:  # registry and network errors carry a message and a code
            loop.call_soon_threadsafe(
                queue.put_nowait,
                (
                    "error",
                    {
                        "error": getattr(e, "message", None) or str(e) or type(e).__name__,
                        "code": getattr(e, "code", None) or "pull_failed",
                    },
                ),
            )

    task = asyncio.ensure_future(anyio.to_thread.run_sync(run))

    async def events() -> AsyncIterator[bytes]:
        while True:
            kind, data = await queue.get()
            yield sse(kind, data)
            if kind != "progress":
                break
        await task

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete(
    "/{name}",
    response_model=Ok,
    summary="Delete an image (its layers stay until prune)",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def delete_image(
    m: Manager, name: Annotated[str, PathParam(pattern=NAME_PATTERN, description="image name")]
) -> Ok:
    users = [r.id for r in m.list_sessions() if r.image == name]
    if users:
        raise with_code(
            ConflictError(
                f"image {name} is in use by session(s) {', '.join(users)}",
                hint="destroy those sessions first",
            ),
            "image_in_use",
        )
    if m.pool is not None:
        m.pool.drain(name)  # no pooled sandbox keeps using layers a prune may remove
    await anyio.to_thread.run_sync(m.images.delete, name)
    return Ok()
