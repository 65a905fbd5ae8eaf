"""Thumbnails and full images, by content hash only, with long-lived cache headers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse

from dashboards import thumbnails
from dashboards.auth import reader
from store.users import UserInfo

router = APIRouter()


def _known(request: Request, sha256: str) -> str:
    if not thumbnails.valid_sha(sha256):
        raise HTTPException(404, "not a sha256")
    with request.app.state.store.session() as session:
        ext = thumbnails.blob_ext(session, sha256)
    if ext is None:
        raise HTTPException(404, f"no image with hash {sha256}")
    return ext


def _not_modified(request: Request, etag: str) -> Response | None:
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, **thumbnails.CACHE_HEADERS})
    return None


@router.get("/thumbs/{sha256}", tags=["media"])
def thumb(request: Request, sha256: str, side: int = thumbnails.THUMB_SIDE, user: UserInfo = Depends(reader)):
    """A JPEG of an image or artifact no larger than `side` (320: the grid's thumbnail; 2048: the image
    view's screen-size copy), made once and cached by hash."""
    if side not in thumbnails.SIDES:
        raise HTTPException(404, f"side: one of {', '.join(map(str, thumbnails.SIDES))}")
    etag = f'"{sha256}-{side}"'
    if hit := _not_modified(request, etag):
        return hit
    path = thumbnails.thumbnail(request.app.state.store, sha256, _known(request, sha256), side)
    return FileResponse(path, media_type="image/jpeg", headers={"ETag": etag, **thumbnails.CACHE_HEADERS})


@router.get("/blobs/{sha256}", tags=["media"])
def blob(request: Request, sha256: str, user: UserInfo = Depends(reader)):
    """The full image or artifact bytes."""
    etag = f'"{sha256}"'
    if hit := _not_modified(request, etag):
        return hit
    ext = _known(request, sha256)
    data = request.app.state.store.blobs.get(sha256, ext)
    return Response(data, media_type=thumbnails.MEDIA_TYPES.get(ext, "application/octet-stream"),
                    headers={"ETag": etag, **thumbnails.CACHE_HEADERS})
