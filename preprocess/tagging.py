"""The `tag` step (WD14-style ONNX taggers, DeepDanbooru) and the `caption` step (BLIP).

Models come from the registry or a local folder (`--set model=...`) and load once; images run
in batches of `batch_size`. The tagger kind is read from the folder:
- wd14-onnx: `model.onnx` + `selected_tags.csv` (tag_id,name,category,count; category 9 rating,
  4 character, else general). Input NHWC float32 BGR 0…255, padded square on white.
- deepdanbooru: a project folder (`project.json`, `model-<model>.h5|.keras`, `tags.txt`,
  optional `tags-character.txt`); tags named "rating:…" are ratings.
Raw confidences go through preprocess.tag_postprocess (thresholds, blacklist, rename, ...).
"""

from __future__ import annotations

import csv
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params
from preprocess.tag_postprocess import TagPostProcess, postprocess_tags

WD14_CATEGORIES = {9: "rating", 4: "character"}  # everything else is general
RawScores = list[tuple[str, float, str]]


class TagParams(TagPostProcess):
    model: str = "wd14-vit-v2"
    backend: Literal["auto", "wd14-onnx", "deepdanbooru"] = "auto"
    batch_size: int = Field(8, ge=1)


class CaptionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "blip-base"
    prompt: str | None = None  # conditional captioning: the caption continues this text
    max_new_tokens: int = Field(40, ge=1, le=512)
    num_beams: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


def rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over white (what taggers were trained on)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def detect_tagger(path: Path) -> str:
    folder = path.parent if path.is_file() else path
    if path.suffix == ".onnx" or (folder / "model.onnx").exists():
        return "wd14-onnx"
    if (folder / "project.json").exists():
        return "deepdanbooru"
    raise ValueError(
        f"step 'tag': model: {path} is not a tagger folder: expected model.onnx + selected_tags.csv "
        "(WD14) or project.json + model + tags.txt (DeepDanbooru)"
    )


# --- WD14-style ONNX ---------------------------------------------------------------------------

def read_selected_tags(path: Path) -> list[tuple[str, str]]:
    """(name, category) per output of a WD14 tagger, from selected_tags.csv."""
    if not path.exists():
        raise ValueError(f"step 'tag': model: {path.name} is missing next to model.onnx ({path.parent})")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"name", "category"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected tag_id,name,category,count)")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((row["name"], WD14_CATEGORIES.get(int(row["category"]), "general")))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: category {row.get('category')!r} is not a number") from None
    return rows


def load_wd14(path: Path) -> Callable[[list[Image.Image]], list[RawScores]]:
    import onnxruntime as ort

    model_file = path if path.is_file() else path / "model.onnx"
    tags = read_selected_tags(model_file.parent / "selected_tags.csv")
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_file), providers=[p for p in wanted if p in ort.get_available_providers()])
    model_input = session.get_inputs()[0]
    size = model_input.shape[1] if isinstance(model_input.shape[1], int) else 448
    fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
    outputs = session.get_outputs()[0]
    if isinstance(outputs.shape[-1], int) and outputs.shape[-1] != len(tags):
        raise ValueError(f"{model_file}: the model has {outputs.shape[-1]} outputs but selected_tags.csv lists {len(tags)} tags")

    def prepare(image: Image.Image) -> np.ndarray:
        image = rgb_on_white(image)
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB → BGR, 0…255

    def infer(images: list[Image.Image]) -> list[RawScores]:
        arrays = np.stack([prepare(image) for image in images])
        chunks = [arrays[i : i + 1] for i in range(len(arrays))] if fixed_batch == 1 else [arrays]
        probs = np.concatenate([session.run([outputs.name], {model_input.name: c})[0] for c in chunks])
        return [[(name, float(p), category) for (name, category), p in zip(tags, row)] for row in probs]

    return infer


# --- DeepDanbooru ------------------------------------------------------------------------------

def import_tensorflow():
    """TensorFlow, loaded safely beside torch: every TensorFlow import in Atelier goes through here.

    triton must be loaded before TensorFlow: loaded after it, triton's native module segfaults the
    process (TF 2.21 + triton from torch 2.14), e.g. when transformers next loads a model.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    import tensorflow

    return tensorflow


def import_deepdanbooru():
    """The deepdanbooru package; its `tensorflow_io` import (used only to read WebP files, which we
    never hand it: it gets decoded pixels) is satisfied by an empty module where tensorflow-io is absent."""
    try:
        import_tensorflow()
    except ImportError as error:
        raise ValueError(f"step 'tag': backend deepdanbooru needs TensorFlow: pip install '.[deepdanbooru]' ({error})") from None
    try:
        import tensorflow_io  # noqa: F401
    except ImportError:
        sys.modules.setdefault("tensorflow_io", types.ModuleType("tensorflow_io"))
    try:
        import deepdanbooru
    except ImportError as error:
        raise ValueError(f"step 'tag': backend deepdanbooru needs the optional extra: pip install '.[deepdanbooru]' ({error})") from None
    return deepdanbooru


def load_deepdanbooru(path: Path) -> Callable[[list[Image.Image]], list[RawScores]]:
    dd = import_deepdanbooru()
    tf = import_tensorflow()

    folder = path if path.is_dir() else path.parent
    # load_project is broken in 1.0.4; these two are what it should call
    model = dd.project.load_model_from_project(str(folder), compile_model=False)
    tags = dd.project.load_tags_from_project(str(folder))
    character_file = folder / "tags-character.txt"
    characters = set(dd.data.load_tags(str(character_file))) if character_file.exists() else set()
    height, width = model.input_shape[1], model.input_shape[2]
    if model.output_shape[-1] != len(tags):
        raise ValueError(f"{folder}: the model has {model.output_shape[-1]} outputs but tags.txt lists {len(tags)} tags")

    def category(tag: str) -> str:
        return "rating" if tag.startswith("rating:") else "character" if tag in characters else "general"

    categories = [category(tag) for tag in tags]

    def prepare(image: Image.Image) -> np.ndarray:
        # what dd.data.load_image_for_evaluate does after decoding a file
        pixels = tf.image.resize(np.asarray(rgb_on_white(image)), size=(height, width),
                                 method=tf.image.ResizeMethod.AREA, preserve_aspect_ratio=True).numpy()
        return dd.image.transform_and_pad_image(pixels, width, height) / 255.0

    def infer(images: list[Image.Image]) -> list[RawScores]:
        probs = model(np.stack([prepare(image) for image in images]).astype(np.float32), training=False).numpy()
        return [[(tag, float(p), c) for tag, p, c in zip(tags, row, categories)] for row in probs]

    return infer


@register("tag", params=TagParams, version=2)  # 2: tags stored unescaped
def load_tagger(params: dict, registry) -> LoadedStep:
    """Tag suggestions with confidences, post-processed (see preprocess.tag_postprocess)."""
    parsed: TagParams = validate_params(TagParams, params, "tag")
    resolved = registry.resolve(parsed.model, kind="tagger")
    backend = detect_tagger(resolved.path) if parsed.backend == "auto" else parsed.backend
    infer = load_wd14(resolved.path) if backend == "wd14-onnx" else load_deepdanbooru(resolved.path)
    options = TagPostProcess.model_validate(parsed.model_dump(include=set(TagPostProcess.model_fields)))

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for batch in batches(items, parsed.batch_size):
            for raw in infer([item.image for item in batch]):
                tags = postprocess_tags(raw, options)
                outputs.append(StepOutput(tags=tags, meta={"tag_count": len(tags)}))
        return outputs

    return LoadedStep("tag", backend, resolved.name, resolved.sha256, run, parsed.model_dump(mode="json"))


# --- captions ----------------------------------------------------------------------------------

def pick_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA device is available")
    return "cuda" if choice == "auto" and torch.cuda.is_available() else ("cpu" if choice == "auto" else choice)


@register("caption", params=CaptionParams)
def load_captioner(params: dict, registry) -> LoadedStep:
    """A natural-language caption from a BLIP-style transformers folder (BlipForConditionalGeneration)."""
    parsed: CaptionParams = validate_params(CaptionParams, params, "caption")
    resolved = registry.resolve(parsed.model, kind="captioner")
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if not (resolved.path / "config.json").exists():
        raise ValueError(f"step 'caption': model: {resolved.path} is not a transformers folder (no config.json)")
    device = pick_device(parsed.device)
    processor = BlipProcessor.from_pretrained(resolved.path)
    model = BlipForConditionalGeneration.from_pretrained(resolved.path).to(device).eval()

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for batch in batches(items, parsed.batch_size):
            images = [rgb_on_white(item.image) for item in batch]
            text = [parsed.prompt] * len(images) if parsed.prompt else None
            inputs = processor(images=images, text=text, return_tensors="pt").to(device)
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=parsed.max_new_tokens, num_beams=parsed.num_beams)
            for caption in processor.batch_decode(ids, skip_special_tokens=True):
                outputs.append(StepOutput(caption=" ".join(caption.split())))
        return outputs

    return LoadedStep("caption", "blip", resolved.name, resolved.sha256, run, parsed.model_dump(mode="json"))
