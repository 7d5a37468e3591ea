"""``/v1/sessions/{id}/exec`` (blocking) and ``/exec/stream`` (Server-Sent Events)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from sandkasten.api.deps import Manager, require_api_key
from sandkasten.api.errors import CONFLICT, NOT_FOUND, Responses, responses
from sandkasten.api.models import ExecOut, ExecRequest, SplitExecOut, sse_schema
from sandkasten.errors import SandkastenError, ValidationError, with_code
from sandkasten.runtime.base import ExecChunk, ExecResult
from sandkasten.session.manager import SessionManager

log = logging.getLogger("sandkasten")

MAX_CMD_BYTES = 1 << 20

router = APIRouter(prefix="/v1/sessions", tags=["exec"], dependencies=[Depends(require_api_key)])


def _check(body: ExecRequest, m: SessionManager) -> int:
    if len(body.cmd.encode("utf-8", "surrogatepass")) > MAX_CMD_BYTES:
        raise with_code(
            ValidationError(
                "cmd is over 1 MiB",
                hint="write the script with POST /v1/sessions/{id}/fs/write, then exec it",
            ),
            "cmd_too_large",
        )
    if not body.cmd.strip():
        raise with_code(ValidationError("cmd is empty"), "invalid_request")
    cap = m.config.defaults.max_exec_timeout_ms
    return min(body.timeout_ms or cap, cap)


@router.post(
    "/{session_id}/exec",
    response_model=ExecOut | SplitExecOut,
    response_model_exclude_none=True,
    summary="Run a command and wait for it",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def exec_command(m: Manager, session_id: str, body: ExecRequest) -> ExecOut | SplitExecOut:
    sandbox = m.sandbox(session_id)
    timeout = _check(body, m)
    if body.split_output:
        s = await sandbox.exec_split(body.cmd, timeout_ms=timeout)
        m.note_cwd(session_id, s.cwd)
        return SplitExecOut(
            exit_code=s.exit_code,
            stdout=s.stdout,
            stderr=s.stderr,
            cwd=s.cwd,
            duration_ms=s.duration_ms,
            truncated=s.truncated or None,
            timed_out=s.timed_out or None,
        )
    r = await sandbox.exec(body.cmd, timeout_ms=timeout, raw_output=body.raw_output)
    m.note_cwd(session_id, r.cwd)
    return ExecOut(
        exit_code=r.exit_code,
        cwd=r.cwd,
        output=r.output,
        truncated=r.truncated,
        duration_ms=r.duration_ms,
        timed_out=r.timed_out or None,
    )


def sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_DOC: Responses = {
    200: {
        "description": "Server-Sent Events: `chunk` {chunk, timestamp}, then `done` "
        "{exit_code, cwd, duration_ms, truncated} or `error` {error, code}",
        "content": {"text/event-stream": {"schema": sse_schema(["chunk", "done", "error"])}},
    }
}


@router.post(
    "/{session_id}/exec/stream",
    response_class=StreamingResponse,
    summary="Run a command, streaming its output as Server-Sent Events",
    responses={**SSE_DOC, **responses(NOT_FOUND)},
)
async def exec_stream(m: Manager, session_id: str, body: ExecRequest) -> StreamingResponse:
    sandbox = m.sandbox(session_id)
    timeout = _check(body, m)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for item in sandbox.exec_stream(
                body.cmd, timeout_ms=timeout, raw_output=body.raw_output
            ):
                if isinstance(item, ExecChunk):
                    yield sse("chunk", {"chunk": item.data, "timestamp": int(time.time() * 1000)})
                elif isinstance(item, ExecResult):
                    m.note_cwd(session_id, item.cwd)
                    done: dict[str, object] = {
                        "exit_code": item.exit_code,
                        "cwd": item.cwd,
                        "duration_ms": item.duration_ms,
                        "truncated": item.truncated,
                    }
                    if item.timed_out:
                        done["timed_out"] = True
                    yield sse("done", done)
        except SandkastenError as e:
            yield sse("error", {"error": e.message, "code": e.code})
        except Exception as e:  # the stream has started: report in-band, never a traceback
            log.exception("exec stream failed session=%s", session_id)
            yield sse("error", {"error": str(e) or type(e).__name__, "code": "internal"})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
