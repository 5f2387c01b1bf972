"""``/api/v1/admin/usermap``: the user mapping, for admins.

An admin is either the CLI on the server's machine (the local admin key as a Bearer token,
what ``gpufleet usermap`` sends) or a logged-in web user with the admin role (changes also
need the session's CSRF token, ``X-CSRF-Token``).

- ``GET /api/v1/admin/usermap`` (``?format=csv`` for CSV): every mapping.
- ``PUT /api/v1/admin/usermap/{user}`` ``{"person": ..., "group": ..., "email": ...}``: set
  one (the e-mail address is where notices about this user's GPUs go: docs/alerts.md).
- ``DELETE /api/v1/admin/usermap/{user}``: forget one (404 when there is none).
- ``POST /api/v1/admin/usermap/import`` ``{"mappings": [{"user", "person", "group", "email"}...],
  "replace": false}``: set many at once (all checked before any is stored); ``replace`` also
  forgets the users not in the list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gpufleet.http.errors import ApiError
from gpufleet.store import StoreError
from gpufleet.usermap.core import MAX_IMPORT, MappingError, from_store, make, to_csv

router = APIRouter(prefix="/api/v1/admin/usermap", tags=["admin"])


class MappingBody(BaseModel):
    person: Annotated[str | None, Field(max_length=1024)] = None
    group: Annotated[str | None, Field(max_length=1024)] = None
    email: Annotated[str | None, Field(max_length=1024)] = None


class ImportItem(MappingBody):
    user: Annotated[str, Field(max_length=1024)]


class ImportBody(BaseModel):
    mappings: Annotated[list[ImportItem], Field(max_length=MAX_IMPORT)]
    replace: Annotated[bool, Field(strict=True)] = False


async def _admin(request: Request, authorization: str | None, change: bool) -> None:
    """The local admin key, or a logged-in admin (with the CSRF token for a change)."""
    from gpufleet.accounts.web import csrf_protected, require_role
    from gpufleet.http.auth import check_admin

    if authorization is not None:
        check_admin(authorization, request.app.state.ctx.admin_key)
        return
    require_role("admin")(request)
    if change:
        await csrf_protected(request)


def _store(request: Request) -> Any:
    return request.app.state.ctx.store


def _mappings(request: Request) -> list[Any]:
    try:
        return from_store(_store(request).user_mapping())
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", str(exc)) from None


@router.get(
    "",
    summary="Every Unix user -> person/group/e-mail mapping",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def list_mappings(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    await _admin(request, authorization, change=False)
    mappings = _mappings(request)
    if format == "csv":
        return Response(to_csv(mappings), media_type="text/csv; charset=utf-8")
    return {"mappings": [m.view() for m in mappings]}


@router.put("/{user}", summary="Map a Unix user to a person, a group, an e-mail address")
async def set_mapping(
    request: Request, user: str, body: MappingBody,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:  # fmt: skip
    await _admin(request, authorization, change=True)
    try:
        m = make(user, body.person, body.group, body.email)
    except MappingError as exc:
        raise ApiError(422, "invalid_mapping", str(exc)) from None
    _store(request).set_user_mapping(*m.row())
    return m.view()


@router.delete("/{user}", summary="Forget a Unix user's mapping (they report as themselves)")
async def delete_mapping(
    request: Request, user: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    await _admin(request, authorization, change=True)
    if user not in {m.user for m in _mappings(request)}:
        raise ApiError(404, "unknown_mapping", f"no mapping for the user {user[:80]!r}")
    _store(request).set_user_mapping(user, None, None)
    return {"deleted": user}


@router.post("/import", summary="Set many mappings at once (optionally replacing all)")
async def import_mappings(
    request: Request, body: ImportBody, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    await _admin(request, authorization, change=True)
    checked = []
    seen: set[str] = set()
    for i, item in enumerate(body.mappings):
        try:
            m = make(item.user, item.person, item.group, item.email, where=f"mappings[{i}]")
        except MappingError as exc:
            raise ApiError(422, "invalid_mapping", str(exc)) from None
        if m.user in seen:
            raise ApiError(
                422, "invalid_mapping", f"mappings[{i}]: user {m.user!r} is listed twice"
            )
        seen.add(m.user)
        checked.append(m)
    done, removed = _store(request).set_user_mappings(
        [m.row() for m in checked], replace=body.replace
    )
    return {"set": done, "deleted": removed}
