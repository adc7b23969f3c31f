"""Optional API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

# Declared in the OpenAPI schema (as alternatives: either one is enough) whenever a key is
# required, so Swagger UI shows an Authorize button and "Try it out" sends the key.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="The VAE_API_KEY as `Authorization: Bearer <key>`; paste the key alone",
)
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The VAE_API_KEY as `X-API-Key: <key>`"
)


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header_key: Annotated[str | None, Depends(header_scheme)],
) -> None:
    """No-op when VAE_API_KEY is unset; otherwise a constant-time comparison or 401.
    Every key offered must be right: a wrong Bearer token next to a right X-API-Key is 401,
    so a client misconfigured in one place is told so rather than passing by luck, and a
    proxy that adds one header cannot mask a stale key in the other.
    (`async def` only to stay on the event loop: it does no I/O.)"""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    offered = [key for key in (bearer.credentials if bearer else None, header_key) if key]
    key = expected.get_secret_value().encode()
    if not offered or not all(hmac.compare_digest(each.encode(), key) for each in offered):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
            headers={"WWW-Authenticate": "Bearer"},
        )
