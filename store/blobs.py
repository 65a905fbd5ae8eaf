"""Content-addressed blob store on fsspec: `blobs/ab/cd/<sha256>.<ext>`, written atomically.

A local folder by default; `ATELIER_BLOBS=s3://bucket/prefix` puts blobs in S3 (or any
S3-protocol server) through s3fs. S3 credentials and the endpoint come from the standard AWS
variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_PROFILE`, …);
no code here reads, stores or prints them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem


class BlobStoreUnavailable(RuntimeError):
    """The blob store cannot be used (unreachable, refused, missing): one line naming what and where."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _where(url: str) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"{url} (endpoint {endpoint})" if endpoint else url


def describe_error(url: str, error: BaseException) -> str:
    """One line for a failed blob-store call: unreachable, credentials refused, or no such bucket."""
    name = type(error).__name__
    text = str(error).splitlines()[0] if str(error) else name
    if "EndpointConnection" in name or "ConnectTimeout" in name or "ClientConnector" in name \
            or isinstance(error, (ConnectionError, TimeoutError)):
        return f"blob store {_where(url)} is unreachable ({name})"
    if isinstance(error, PermissionError) or any(k in text for k in ("AccessDenied", "InvalidAccessKeyId",
                                                                        "SignatureDoesNotMatch", "Forbidden")):
        return (f"blob store {_where(url)} refused the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                f"or AWS_PROFILE): {text}")
    if isinstance(error, FileNotFoundError):
        return f"blob store {_where(url)}: the bucket or folder does not exist ({text})"
    return f"blob store {_where(url)}: {name}: {text}"


class BlobStore:
    """Blobs named by the sha256 of their bytes. A local folder by default; any fsspec URL works."""

    def __init__(self, url: str):
        self.url = url
        remote = "://" in url and not url.startswith("file://")
        # a remote store reads its credentials and endpoint from the environment now, not from a
        # file-system instance cached earlier in this process under other variables
        self.fs, self.root = fsspec.core.url_to_fs(url, **({"skip_instance_cache": True} if remote else {}))
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def key(self, sha256: str, ext: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        if not ext.isalnum():
            raise ValueError(f"bad blob extension: {ext!r}")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext.lower()}"

    def path(self, sha256: str, ext: str) -> str:
        """The blob's path in its file system (no scheme: for `self.fs` calls)."""
        return f"{self.root}/{self.key(sha256, ext)}"

    def url_of(self, sha256: str, ext: str) -> str:
        """Where a user finds the blob: a local path, or `s3://bucket/prefix/ab/cd/<sha>.<ext>`."""
        path = self.path(sha256, ext)
        return path if self.local else self.fs.unstrip_protocol(path)

    def check(self) -> None:
        """Fail now, in one line, when the store cannot be used (remote stores: one quick request)."""
        if self.local:
            return
        fs = self.fs
        if type(fs).__name__ == "S3FileSystem":  # a short probe: no minutes of retries on a dead endpoint
            fs = fsspec.filesystem("s3", skip_instance_cache=True,
                                   config_kwargs={"connect_timeout": 5, "read_timeout": 10,
                                                  "retries": {"max_attempts": 1}})
        try:
            fs.ls(self.root, detail=False)
        except FileNotFoundError:  # an empty prefix in an existing bucket lists as missing
            try:
                fs.info(self.root.split("/", 1)[0])
            except Exception as error:
                raise BlobStoreUnavailable(describe_error(self.url, error)) from None
        except Exception as error:
            raise BlobStoreUnavailable(describe_error(self.url, error)) from None

    def exists(self, sha256: str, ext: str) -> bool:
        return self.fs.exists(self.path(sha256, ext))

    def put(self, data: bytes, ext: str) -> str:
        """Store `data`, return its sha256. Writing the same bytes twice is a no-op."""
        sha = sha256_bytes(data)
        target = self.path(sha, ext)
        if not self.local:  # one PUT: an object appears whole or not at all
            try:
                self.fs.pipe_file(target, data)
            except Exception as error:  # botocore's connection errors are not OSErrors
                raise BlobStoreUnavailable(describe_error(self.url, error)) from error
            return sha
        if self.fs.exists(target):
            return sha
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open(temp, "wb") as handle:
            handle.write(data)
        self.fs.mv(temp, target)  # rename: atomic on a local file system
        return sha

    def put_file(self, path: str | Path, ext: str, sha256: str | None = None) -> str:
        """Store a file (streamed: checkpoints can be gigabytes); returns its sha256."""
        sha = sha256 or sha256_file(path)
        target = self.path(sha, ext)
        if self.local:
            if not self.fs.exists(target):
                parent = target.rsplit("/", 1)[0]
                self.fs.makedirs(parent, exist_ok=True)
                temp = f"{parent}/.tmp-{uuid.uuid4().hex}"
                self.fs.put_file(str(path), temp)
                self.fs.mv(temp, target)
            return sha
        try:
            self.fs.put_file(str(path), target)
        except Exception as error:
            raise BlobStoreUnavailable(describe_error(self.url, error)) from error
        return sha

    def get(self, sha256: str, ext: str) -> bytes:
        return self.fs.cat_file(self.path(sha256, ext))

    def get_file(self, sha256: str, ext: str, target: str | Path) -> Path:
        """Copy a blob to a local file (atomically: a reader never sees half of it); returns the path."""
        target = Path(target)
        if target.is_file() and target.stat().st_size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            self.fs.get_file(self.path(sha256, ext), str(temp))
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return target

    def delete(self, sha256: str, ext: str) -> None:
        try:
            self.fs.rm_file(self.path(sha256, ext))
        except FileNotFoundError:
            pass

    def local_path(self, sha256: str, ext: str) -> Path:
        """A filesystem path for local stores (for libraries that want a path)."""
        if not self.local:
            raise RuntimeError("blob store is not local; use get()")
        return Path(self.path(sha256, ext))
