"""Local administration over HTTP (agent tokens), authorised by the data dir's admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from gpufleet.http.auth import check_admin, new_token
from gpufleet.http.context import Context
from gpufleet.http.errors import ApiError
from gpufleet.store import StoreError, TokenRecord

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreate(BaseModel):
    name: Annotated[str, Field(pattern=TOKEN_NAME, description="Who uses it, e.g. a host name")]


def _admin(request: Request, authorization: str | None) -> Context:
    ctx: Context = request.app.state.ctx
    check_admin(authorization, ctx.admin_key)
    return ctx


def token_view(t: TokenRecord) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "created_at": t.created_at, "revoked_at": t.revoked_at}


@router.post(
    "/tokens",
    status_code=201,
    summary="Create an agent token (shown once)",
    responses={409: {"description": "a token of that name exists"}},
)
def create_token(
    request: Request, body: TokenCreate, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    ctx = _admin(request, authorization)
    token, record = new_token(body.name)
    try:
        ctx.store.create_token(record)
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    ctx.tokens.put(record)
    return {**token_view(record), "token": token}


@router.get("/tokens", summary="List agent tokens (never their secrets)")
def list_tokens(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    ctx = _admin(request, authorization)
    return {"tokens": [token_view(t) for t in ctx.store.tokens()]}


@router.delete("/tokens/{name}", summary="Revoke an agent token")
def revoke_token(
    request: Request, name: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    import time

    ctx = _admin(request, authorization)
    try:
        record = ctx.store.revoke_token(name, time.time())
    except StoreError as exc:
        raise ApiError(404, "unknown_token", str(exc)) from None
    ctx.tokens.put(record)
    return token_view(record)
