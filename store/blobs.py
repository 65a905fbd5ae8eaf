"""Content-addressed blob store on fsspec: `blobs/ab/cd/<sha256>.<ext>`, written atomically."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class BlobStore:
    """Blobs named by the sha256 of their bytes. A local folder by default; any fsspec URL works."""

    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def key(self, sha256: str, ext: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        if not ext.isalnum():
            raise ValueError(f"bad blob extension: {ext!r}")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext.lower()}"

    def path(self, sha256: str, ext: str) -> str:
        return f"{self.root}/{self.key(sha256, ext)}"

    def exists(self, sha256: str, ext: str) -> bool:
        return self.fs.exists(self.path(sha256, ext))

    def put(self, data: bytes, ext: str) -> str:
        """Store `data`, return its sha256. Writing the same bytes twice is a no-op."""
        sha = sha256_bytes(data)
        target = self.path(sha, ext)
        if self.fs.exists(target):
            return sha
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open(temp, "wb") as handle:
            handle.write(data)
        # rename is atomic on a local file system; object stores write whole objects anyway
        self.fs.mv(temp, target)
        return sha

    def get(self, sha256: str, ext: str) -> bytes:
        with self.fs.open(self.path(sha256, ext), "rb") as handle:
            return handle.read()

    def local_path(self, sha256: str, ext: str) -> Path:
        """A filesystem path for local stores (for libraries that want a path)."""
        if not self.local:
            raise RuntimeError("blob store is not local; use get()")
        return Path(self.path(sha256, ext))
