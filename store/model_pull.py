"""`atelier models pull`: fetch registry entries into the models folder, verified.

The one place that goes online. Hub entries (`hf_repo`) go through huggingface_hub into the
Hugging Face cache (HF_HOME / HF_HUB_CACHE, HF_ENDPOINT honoured) and the entry's path in the
models folder becomes a link to the snapshot; URL entries are fetched over HTTP into
`<path>.part`, resumed with a Range request after an interruption (in this run or a later one),
then renamed into place. Every published sha256 is checked: a mismatch removes the file and
fails naming both hashes. An unreachable host fails at once with the entry and the URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from store.registry import ModelEntry, Registry

CHUNK = 1 << 20
RETRIES = 3  # reconnects (each resuming where the last stopped) before a URL download gives up
CONNECT_TIMEOUT = 10.0

# (entry name, bytes done, bytes total or None)
Progress = Callable[[str, int, int | None], None]


class PullError(RuntimeError):
    """A pull that failed; the message is one line naming the entry (and the URL or file)."""


@dataclass
class Pulled:
    name: str
    status: str  # "downloaded" | "present" (already there, hash checked)
    path: str
    source: str  # the URL or hub repo it came from
    bytes: int = 0
    sha256: dict[str, str] = field(default_factory=dict)  # file (relative to path for folders) → sha256
    resumed_from: int = 0  # bytes already on disk when this run started the transfer


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def pullable(entry: ModelEntry) -> bool:
    return bool(entry.hf_repo or entry.url)


def pull(registry: Registry, name: str, source: str | None = None, progress: Progress | None = None) -> Pulled:
    """Download registry entry `name` (from `source`, a mirror, when given); PullError on any failure."""
    if name not in registry.entries:
        raise PullError(f"{name}: not in the registry ({', '.join(sorted(registry.entries))})")
    entry = registry.entries[name]
    if entry.hf_repo:
        return _pull_hub(registry, name, entry, source, progress)
    if entry.url:
        url = f"{source.rstrip('/')}/{entry.path}" if source else entry.url
        return _pull_url(registry, name, entry, url, progress)
    raise PullError(f"{name}: no download URL in the registry; get it by hand from {entry.source or 'its upstream'} "
                    f"and put it at {registry.expected_path(name)}")


def _unreachable(name: str, url: str, error: Exception) -> PullError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return PullError(f"{name}: cannot reach {url} ({reason}); offline? nothing was downloaded")


def _pull_url(registry: Registry, name: str, entry: ModelEntry, url: str, progress: Progress | None) -> Pulled:
    target = registry.expected_path(name)
    if target.is_file() and (not entry.sha256 or (present := sha256_of(target)) == entry.sha256):
        return Pulled(name, "present", str(target), url, target.stat().st_size,
                      {target.name: entry.sha256 or present} if entry.sha256 else {})
    # a file with another hash stays until a verified download replaces it
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    started_at = part.stat().st_size if part.exists() else 0
    total = None
    timeout = httpx.Timeout(60.0, connect=CONNECT_TIMEOUT)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for attempt in range(RETRIES + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 416 and have:  # the partial file is already whole
                        break
                    if response.status_code >= 400:
                        raise PullError(f"{name}: {url} answered HTTP {response.status_code}")
                    if have and response.status_code != 206:  # the server ignored Range: start again
                        have = 0
                    length = response.headers.get("content-length")
                    total = have + int(length) if length is not None else None
                    with open(part, "ab" if have else "wb") as handle:
                        done = have
                        for block in response.iter_bytes():  # as received: a cut keeps what arrived
                            handle.write(block)
                            done += len(block)
                            if progress:
                                progress(name, done, total)
                if total is None or part.stat().st_size >= total:
                    break
                error: Exception = httpx.RemoteProtocolError(f"connection closed at {part.stat().st_size} of {total} bytes")
            except (httpx.ConnectError, httpx.ConnectTimeout) as connect_error:
                if attempt == 0 and not part.exists():
                    raise _unreachable(name, url, connect_error) from None
                error = connect_error
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as read_error:
                error = read_error
            if attempt == RETRIES:
                size = part.stat().st_size if part.exists() else 0
                raise PullError(f"{name}: download from {url} interrupted at {size} bytes ({error}); "
                                f"run the pull again to resume from {part}") from None
    actual = sha256_of(part)
    if entry.sha256 and actual != entry.sha256:
        part.unlink()
        raise PullError(f"{name}: sha256 mismatch for {url}: expected {entry.sha256}, got {actual}; "
                        "the download was removed")
    os.replace(part, target)  # atomic: the registry never sees half a file
    return Pulled(name, "downloaded", str(target), url, target.stat().st_size, {target.name: actual}, started_at)


def _pull_hub(registry: Registry, name: str, entry: ModelEntry, source: str | None,
              progress: Progress | None) -> Pulled:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    endpoint = (source or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    url = f"{endpoint}/{entry.hf_repo}"
    target = registry.expected_path(name)
    if target.is_dir() and not target.is_symlink():  # put there by hand: checked, never replaced
        return Pulled(name, "present", str(target), url, 0, _check_files(name, entry, target, url))
    # the CLI runs with HF_HUB_OFFLINE=1 so that nothing else goes online; pulling is the exception
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        _check_reachable(name, endpoint, url)
        folder = Path(snapshot_download(entry.hf_repo, allow_patterns=entry.files or None, endpoint=endpoint))
    except LocalEntryNotFoundError as error:  # the hub did not answer and nothing is cached
        raise _unreachable(name, url, error) from None
    except PullError:
        raise
    except Exception as error:  # noqa: BLE001  (huggingface_hub's HTTP errors: one line naming the repo)
        raise PullError(f"{name}: {url}: {str(error).splitlines()[0]}") from None
    finally:
        constants.HF_HUB_OFFLINE = offline
    hashes = _check_files(name, entry, folder, url, remove=True)
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if progress:
        progress(name, total, total)
    _link(folder, target)
    return Pulled(name, "downloaded", str(target), url, total, hashes)


def _check_files(name: str, entry: ModelEntry, folder: Path, url: str, remove: bool = False) -> dict[str, str]:
    """Check the published sha256 of each file the entry lists; a mismatch fails (and removes a download)."""
    hashes = {}
    for relative, expected in sorted(entry.file_sha256.items()):
        path = folder / relative
        if not path.is_file():
            raise PullError(f"{name}: {url} gave no file {relative} (the registry lists its sha256)")
        actual = sha256_of(path)
        if actual != expected:
            if remove:
                _remove_cached(path)
            raise PullError(f"{name}: sha256 mismatch for {url}/{relative}: expected {expected}, got {actual}"
                            + ("; the download was removed" if remove else f" (in {folder})"))
        hashes[relative] = actual
    return hashes


def _check_reachable(name: str, endpoint: str, url: str) -> None:
    """Fail at once (one line) when the host does not answer, instead of huggingface_hub's cache fallback."""
    parts = urlsplit(endpoint)
    try:
        httpx.head(f"{parts.scheme}://{parts.netloc}/", timeout=httpx.Timeout(CONNECT_TIMEOUT))
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        raise _unreachable(name, url, error) from None
    except httpx.HTTPError:
        pass  # it answered something: huggingface_hub reports what is wrong with the repo


def _remove_cached(path: Path) -> None:
    """Remove a snapshot file and the cache blob it links to, so the next pull fetches it again."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def _link(snapshot: Path, target: Path) -> None:
    """Make the entry's path in the models folder point at the snapshot (a copy where links fail)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    try:
        target.symlink_to(snapshot, target_is_directory=True)
    except OSError:
        shutil.copytree(snapshot, target)
