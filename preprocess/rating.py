"""Step "rating": an NSFW rating from NudeNet's detector (the ONNX model inside the `nudenet` wheel, MIT).

NudeNet finds body parts (exposed or covered) with a score each. The rating follows booru usage:
`explicit` when an exposed genital/anus class scores at least `threshold`, `questionable` when an
exposed breast/buttocks class does, else `safe`. Output: one tag in the tagger's "rating" category
(`rating:safe|questionable|explicit`, confidence = the deciding score, or 1 − the highest NSFW score
for safe), and scores `rating` (0 safe, 1 questionable, 2 explicit: rules like "rating > 0"),
`nsfw_explicit`, `nsfw_questionable` (the highest score of each group, 0 when none was found).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from preprocess.steps import Item, LoadedStep, StepOutput, TagSuggestion, register, validate_params

VERSION = 1
RATINGS = ("safe", "questionable", "explicit")
EXPLICIT = ["FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"]
QUESTIONABLE = ["FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"]


class RatingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # a NudeNet .onnx (e.g. 640m.onnx); None: the 320n model inside the wheel
    resolution: int = Field(320, ge=32, le=2048)  # the model's input side (320n: 320, 640m: 640)
    threshold: float = Field(0.45, gt=0, le=1)  # a class counts from this score on
    explicit_classes: list[str] = Field(default_factory=lambda: list(EXPLICIT))
    questionable_classes: list[str] = Field(default_factory=lambda: list(QUESTIONABLE))


def rate(detections: list[dict], p: RatingParams) -> tuple[str, float, dict[str, float]]:
    """(rating, its confidence, scores) from NudeNet detections [{"class", "score", "box"}]."""
    def best(classes: list[str]) -> float:
        return max((d["score"] for d in detections if d["class"] in classes), default=0.0)

    explicit, questionable = best(p.explicit_classes), best(p.questionable_classes)
    if explicit >= p.threshold:
        rating, confidence = "explicit", explicit
    elif questionable >= p.threshold:
        rating, confidence = "questionable", questionable
    else:
        rating, confidence = "safe", 1.0 - max(explicit, questionable)
    scores = {"rating": float(RATINGS.index(rating)), "nsfw_explicit": round(explicit, 4),
              "nsfw_questionable": round(questionable, 4)}
    return rating, round(confidence, 4), scores


def nudenet_model_file(model: str | None) -> Path:
    if model:
        return Path(model).expanduser()
    import nudenet

    return Path(nudenet.__file__).parent / "320n.onnx"


@register("rating", params=RatingParams, version=VERSION)
def load_rating(params: dict, registry) -> LoadedStep:
    """Open NudeNet's ONNX model (one thread per worker); a missing or broken file fails naming it."""
    from nudenet import nudenet as nn

    from preprocess.onnx_session import onnx_session
    from store.registry import file_hash

    p = validate_params(RatingParams, params, "rating")
    path = nudenet_model_file(p.model)
    session = onnx_session(path, "NudeNet detector")
    input_name = session.get_inputs()[0].name

    def detect(rgb: np.ndarray) -> list[dict]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = nn._read_image(bgr, p.resolution)
        output = session.run(None, {input_name: blob})
        return nn._postprocess(output, x_pad, y_pad, x_ratio, y_ratio, width, height, p.resolution, p.resolution)

    def run(items: list[Item]) -> list[StepOutput]:
        from preprocess.tagging import rgb_on_white

        outputs = []
        for item in items:
            detections = detect(np.asarray(rgb_on_white(item.image)))
            rating, confidence, scores = rate(detections, p)
            meta = {"backend": "nudenet", "rating": rating,
                    "detections": [{"class": d["class"], "score": round(float(d["score"]), 4), "box": d["box"]}
                                   for d in detections]}
            outputs.append(StepOutput(meta=meta, scores=scores,
                                      tags=[TagSuggestion(f"rating:{rating}", confidence, "rating")]))
        return outputs

    model_id = str(path) if p.model else "nudenet-320n"
    return LoadedStep("rating", "nudenet", model_id, file_hash(path), run, p.model_dump())
