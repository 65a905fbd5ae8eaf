"""The local model registry: `configs/models.yaml` + a models folder + the local Hugging Face cache.

Nothing is downloaded at run time (only `atelier models pull`, store/model_pull.py, goes online). A missing
model is reported with the exact path to put it at.
Weights load safely: safetensors first; pickled checkpoints only with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from store.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = REPO_ROOT / "configs" / "models.yaml"


class ModelMissing(FileNotFoundError):
    """A model the step needs is not on disk; the message says where to put it."""


class UnsafeWeights(ValueError):
    """A checkpoint that would need arbitrary code execution to unpickle."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # face-detector, face-restorer, upscaler, inpainting, tagger, captioner, clip, ...
    path: str | None = None  # file or folder, relative to the models folder (or absolute)
    hf_repo: str | None = None  # also looked up in the local Hugging Face cache
    sha256: str | None = None  # expected hash of the file, where known
    source: str = ""  # where users get it
    url: str | None = None  # direct download of the file, for `atelier models pull`
    files: list[str] | None = None  # hub entries: the files to fetch (glob patterns); None: the whole repo
    file_sha256: dict[str, str] = {}  # hub entries: published sha256 of files (the hub's LFS oids)
    notes: str = ""


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # registry name, or the path given by the user
    kind: str
    path: Path
    sha256: str  # of the file, or of the folder's files (see folder_hash)

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    kind: str
    status: Literal["present", "missing", "wrong-hash"]
    path: str
    detail: str


def _hash_cache_path(settings: Settings) -> Path:
    return settings.cache_dir / "model_hashes.json"


def file_hash(path: Path, settings: Settings | None = None) -> str:
    """sha256 of a file, or of a folder (sorted relative paths + file hashes); cached by size+mtime."""
    settings = settings or load_settings()
    cache_file = _hash_cache_path(settings)
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = str(path.resolve())
    if key in cache and cache[key]["stamp"] == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    for p, (rel, _, _) in zip(files, stamp):
        inner = hashlib.sha256()
        with open(p, "rb") as handle:
            while block := handle.read(1 << 20):
                inner.update(block)
        if path.is_dir():
            digest.update(f"{rel}\0{inner.hexdigest()}\n".encode())
        else:
            digest = inner
    value = digest.hexdigest()
    cache[key] = {"stamp": stamp, "sha256": value}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache))
    tmp.replace(cache_file)
    return value


class Registry:
    def __init__(self, entries: dict[str, ModelEntry], settings: Settings | None = None):
        self.entries = entries
        self.settings = settings or load_settings()

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir

    def expected_path(self, name: str) -> Path:
        entry = self.entries[name]
        if entry.path is None:
            return self.models_dir / name
        path = Path(entry.path).expanduser()
        return path if path.is_absolute() else self.models_dir / path

    def _hf_cache_path(self, entry: ModelEntry) -> Path | None:
        if not entry.hf_repo:
            return None
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(entry.hf_repo, local_files_only=True))
        except Exception:  # not in the local cache (or hub not installed): never download
            return None

    def locate(self, name: str) -> Path | None:
        path = self.expected_path(name)
        if path.exists():
            return path
        return self._hf_cache_path(self.entries[name])

    def resolve(self, name_or_path: str, kind: str | None = None) -> ResolvedModel:
        """A registry name or a local file/folder → a model on disk, or ModelMissing naming the path."""
        if name_or_path in self.entries:
            entry = self.entries[name_or_path]
            if kind and entry.kind != kind:
                raise ValueError(f"model {name_or_path!r} is a {entry.kind}, not a {kind}")
            path = self.locate(name_or_path)
            if path is None:
                raise ModelMissing(self.missing_message(name_or_path))
            return ResolvedModel(name_or_path, entry.kind, path, file_hash(path, self.settings))
        path = Path(name_or_path).expanduser()
        if path.exists():
            return ResolvedModel(str(path), kind or "local", path.resolve(), file_hash(path, self.settings))
        raise ModelMissing(
            f"model {name_or_path!r} is neither a name in {DEFAULT_REGISTRY.name} "
            f"({', '.join(sorted(self.entries)) or 'empty'}) nor an existing file or folder"
        )

    def resolve_or_fallback(self, name_or_path: str, fallback: bool) -> tuple[ResolvedModel | None, str | None]:
        """(model, None), or (None, why) when a registry model is missing and the step may fall back.

        A local path that does not exist is always an error: only registry models have fallbacks.
        """
        try:
            return self.resolve(name_or_path), None
        except ModelMissing as error:
            if not fallback or name_or_path not in self.entries:
                raise
            return None, str(error)

    def missing_message(self, name: str) -> str:
        entry = self.entries[name]
        where = f" (get it from {entry.source})" if entry.source else ""
        hf = f", or have {entry.hf_repo} in the local Hugging Face cache" if entry.hf_repo else ""
        pull = f"; online, `atelier models pull {name}` fetches it" if entry.url or entry.hf_repo else ""
        return f"model {name!r} ({entry.kind}) is missing: put it at {self.expected_path(name)}{hf}{where}{pull}"

    def status(self) -> list[ModelStatus]:
        rows = []
        for name, entry in sorted(self.entries.items()):
            path = self.locate(name)
            if path is None:
                rows.append(ModelStatus(name, entry.kind, "missing", str(self.expected_path(name)), self.missing_message(name)))
                continue
            if entry.sha256 and path.is_file():
                actual = file_hash(path, self.settings)
                if actual != entry.sha256:
                    rows.append(ModelStatus(name, entry.kind, "wrong-hash", str(path), f"sha256 {actual} != expected {entry.sha256}"))
                    continue
            rows.append(ModelStatus(name, entry.kind, "present", str(path), ""))
        return rows


def load_registry(path: Path | None = None, settings: Settings | None = None) -> Registry:
    """Read and validate the registry file; a bad entry fails naming the file and the field."""
    path = path or Path(os.environ.get("ATELIER_REGISTRY", DEFAULT_REGISTRY))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        parsed = RegistryFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {field}: {first['msg']}") from None
    return Registry(parsed.models, settings)


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from safetensors, or from a pickled .pth/.ckpt/.bin with torch.load(weights_only=True).

    A pickle that needs arbitrary code to load is refused with UnsafeWeights.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
        if "weights_only" in str(error) or isinstance(error, pickle.UnpicklingError):
            raise UnsafeWeights(
                f"{path}: refused — this checkpoint needs arbitrary code execution to unpickle "
                f"(only plain tensors are loaded; convert it to .safetensors): {str(error).splitlines()[0]}"
            ) from None
        raise
