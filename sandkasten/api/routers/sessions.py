"""``/v1/sessions``: create, list, get, destroy, stats."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sandkasten.api.deps import Manager, require_api_key
from sandkasten.api.errors import CONFLICT, NOT_FOUND, POLICY, responses
from sandkasten.api.models import CreateSession, Ok, SessionOut, StatsOut
from sandkasten.session.manager import CreateRequest, iso
from sandkasten.store.db import SessionRow

router = APIRouter(
    prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_api_key)]
)


def session_out(row: SessionRow) -> SessionOut:
    return SessionOut(
        id=row.id,
        image=row.image,
        status=row.status,
        cwd=row.cwd,
        workspace_id=row.workspace_id,
        created_at=iso(row.created_at),
        expires_at=iso(row.expires_at),
    )


@router.post(
    "",
    status_code=201,
    response_model=SessionOut,
    summary="Create a session",
    responses=responses(NOT_FOUND, CONFLICT, POLICY),
)
async def create_session(m: Manager, body: CreateSession | None = None) -> SessionOut:
    b = body or CreateSession()
    row = await m.create(CreateRequest(**b.model_dump()))
    return session_out(row)


@router.get("", response_model=list[SessionOut], summary="List sessions", responses=responses())
async def list_sessions(m: Manager) -> list[SessionOut]:
    return [session_out(r) for r in m.list_sessions()]


@router.get(
    "/{session_id}",
    response_model=SessionOut,
    summary="Get a session",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def get_session(m: Manager, session_id: str) -> SessionOut:
    return session_out(m.get(session_id))


@router.delete(
    "/{session_id}",
    response_model=Ok,
    summary="Destroy a session",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def destroy_session(m: Manager, session_id: str) -> Ok:
    await m.destroy(session_id)
    return Ok()


@router.get(
    "/{session_id}/stats",
    response_model=StatsOut,
    summary="cgroup usage",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def session_stats(m: Manager, session_id: str) -> StatsOut:
    s = await m.sandbox(session_id).stats()
    return StatsOut(
        memory_bytes=s.memory_bytes,
        memory_limit=s.memory_limit,
        cpu_usage_usec=s.cpu_usage_usec,
        pids=s.pids,
    )
