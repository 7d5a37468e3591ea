"""``GET /healthz``: liveness, no authentication."""

from __future__ import annotations

from fastapi import APIRouter

from sandkasten.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness check (no auth)")
async def healthz() -> Health:
    return Health()
