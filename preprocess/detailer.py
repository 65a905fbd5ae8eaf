"""Step "detailer": find regions (faces; other classes with an object detector), inpaint each at a higher
resolution and paste it back through a feathered mask (what ADetailer does in AUTOMATIC1111).

Per region: the box grown by `dilation` px makes a mask, feathered `feather` px inwards; a crop of
the box plus `padding` px (squared where the image allows) is scaled to `resolution`, inpainted at
`strength` with the SD inpainting model, scaled back and pasted through the mask — every pixel
outside the masks is left exactly as it was. Regions are reworked one after another, each seeing
the ones before. Faces come from an earlier align step (meta["faces"]) or from the align step's own
detector; object classes from a YOLO ONNX detector named in `detect`. Masks "detail" (the feathered
union) and "generated" (every pixel that may have changed) go with the result. No region: the image
is recorded as "nothing to do" and passes through.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from preprocess.diffusion import DiffusionParams
from preprocess.face_detect import load_detector
from preprocess.img2img import Reworker, item_prompt
from preprocess.region_masks import box_mask, feather, generated_mask, mask_image
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class DetailerParams(DiffusionParams):
    model: str = "sd-inpainting"  # an inpainting diffusers folder (9-channel UNet)
    strength: float = Field(0.4, ge=0, le=1)
    detect: list[str] = Field(default_factory=lambda: ["faces"])  # "faces" and/or object detectors (registry/ONNX)
    face_model: str = "retinaface-resnet50"  # the align step's detector, with the same fallback chain
    face_fallback: Literal["auto", "yuface", "dlib-hog", "opencv-cascade", "none"] = "auto"
    reuse_faces: bool = True  # take an earlier align step's meta["faces"] instead of detecting again
    classes: list[str] = Field(default_factory=list)  # object classes to keep (empty: all the detector knows)
    confidence: float = Field(0.3, gt=0, le=1)  # object detector score threshold
    face_confidence: float = Field(0.8, gt=0, le=1)
    min_size: int = Field(16, ge=1)  # smaller boxes (px, short side) are left alone
    max_regions: int = Field(8, ge=1, le=64)
    dilation: int = Field(8, ge=0, le=512)  # px added around each box for its mask
    feather: float = Field(8.0, ge=0, le=256)  # px of inward blend at the mask's edge
    padding: int = Field(32, ge=0, le=1024)  # context px around the mask in the crop the model sees
    shape: Literal["rect", "ellipse"] = "rect"


def crop_box(box: list[float], dilation: int, padding: int, width: int, height: int) -> list[int]:
    """The region plus dilation and padding, grown to a square where the image allows, clipped to it."""
    x0, y0, x1, y1 = box
    grow = dilation + padding
    x0, y0, x1, y1 = x0 - grow, y0 - grow, x1 + grow, y1 + grow
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = min(side, width), min(side, height)
    left = min(max(cx - w / 2, 0), width - w)
    top = min(max(cy - h / 2, 0), height - h)
    return [round(left), round(top), round(left + w), round(top + h)]


def find_regions(item: Item, p: DetailerParams, face_detector, object_detectors) -> list[dict]:
    """[{box, label, score, by}] for the image, largest first, small ones dropped, at most max_regions."""
    rgb = None
    regions = []
    for source in p.detect:
        if source == "faces":
            if p.reuse_faces and "faces" in item.meta:
                faces, by = item.meta.get("faces") or [], "earlier step"
            else:
                rgb = rgb if rgb is not None else np.asarray(item.image.convert("RGB"))
                faces, by = face_detector.detect(rgb), face_detector.backend
            regions += [{"box": f["box"], "label": "face", "score": f.get("score"), "by": by} for f in faces]
        else:
            rgb = rgb if rgb is not None else np.asarray(item.image.convert("RGB"))
            detector = object_detectors[source]
            regions += [{**found, "by": detector.backend} for found in detector.detect(rgb)
                        if not p.classes or found["label"] in p.classes]
    regions = [r for r in regions if min(r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]) >= p.min_size]
    regions.sort(key=lambda r: -(r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]))
    return regions[: p.max_regions]


@register("detailer", params=DetailerParams, version=2)  # 2: yuface/dlib before the cascade
def load_detailer(params: dict, registry) -> LoadedStep:
    """Load the inpainting pipeline and the detectors `detect` names."""
    p = validate_params(DetailerParams, params, "detailer")
    unknown = [d for d in p.detect if d != "faces" and d not in registry.entries and "/" not in d and not d.endswith(".onnx")]
    if unknown:
        raise ValueError(f"step 'detailer': detect: {unknown[0]!r} is neither 'faces' nor a registry detector "
                         f"or an .onnx file")
    face_detector, fallback_reason = None, None
    if "faces" in p.detect:
        face_detector, _, _, fallback_reason = load_detector(p.face_model, registry, p.face_fallback,
                                                             p.face_confidence, p.max_regions)
    object_detectors = {}
    for source in p.detect:
        if source != "faces":
            from preprocess.object_detect import YoloOnnxDetector

            object_detectors[source] = YoloOnnxDetector(registry.resolve(source).path, p.confidence)
    rework = Reworker(p, registry, "detailer", want="inpaint")

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            prompt = item_prompt(p.prompt, item)
            width, height = item.image.size
            meta = {**rework.lineage, "backend": "sd-inpaint", "prompt": prompt, "strength": p.strength,
                    "detect": p.detect, "dilation": p.dilation, "feather": p.feather, "padding": p.padding}
            if fallback_reason:
                meta["face_fallback_reason"] = fallback_reason
            regions = find_regions(item, p, face_detector, object_detectors)
            if not regions:
                outputs.append(StepOutput(image=None, meta={**meta, "regions": [],
                                                            "skipped": f"nothing to do: no {' or '.join(p.detect)} found"}))
                continue
            image = item.image.copy()
            union = np.zeros((height, width), np.float32)
            for index, region in enumerate(regions):
                weights = feather(box_mask((width, height), [region["box"]], p.dilation, p.shape == "ellipse"), p.feather)
                x0, y0, x1, y1 = region["crop"] = crop_box(region["box"], p.dilation, p.padding, width, height)
                crop = image.crop((x0, y0, x1, y1))
                reworked = rework(crop, prompt, p.strength, p.seed + index, weights[y0:y1, x0:x1])
                image.paste(reworked, (x0, y0))
                region["seed"] = p.seed + index
                union = np.maximum(union, weights)
            meta["regions"] = regions
            outputs.append(StepOutput(image=image, meta=meta, masks={
                "detail": mask_image(union), "generated": generated_mask(union, item.masks.get("generated"))}))
        return outputs

    return LoadedStep("detailer", "sd-inpaint", rework.resolved.name, rework.resolved.sha256, run, p.model_dump())
