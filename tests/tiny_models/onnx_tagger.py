"""A tiny WD14-style ONNX tagger: `model.onnx` + `selected_tags.csv` in the real layout.

Like SmilingWolf's wd-v1-4 taggers the model takes NHWC float32 BGR pixels in 0…255
(input "input_1:0", dynamic batch) and returns sigmoid confidences ("predictions_sigmoid"), one per
row of selected_tags.csv (tag_id,name,category,count; category 9 rating, 0 general, 4 character).
Its "weights" are chosen so tests know what to expect: most tags have a fixed confidence
(the bias), `night_sky` fires on dark images and `blue_theme` on blue ones.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

SIZE = 32


def _sigmoid_inverse(p: float) -> float:
    return math.log(p / (1 - p))


# name, category, fixed confidence (image-independent), weights on mean (B, G, R) in 0..1
TAGS: list[tuple[str, int, float, tuple[float, float, float]]] = [
    ("general", 9, 0.80, (0, 0, 0)),
    ("sensitive", 9, 0.15, (0, 0, 0)),
    ("questionable", 9, 0.04, (0, 0, 0)),
    ("explicit", 9, 0.01, (0, 0, 0)),
    ("1girl", 0, 0.90, (0, 0, 0)),
    ("solo", 0, 0.62, (0, 0, 0)),
    ("long_hair", 0, 0.45, (0, 0, 0)),
    ("outdoors", 0, 0.27, (0, 0, 0)),
    ("star_(symbol)", 0, 0.73, (0, 0, 0)),
    ("^_^", 0, 0.50, (0, 0, 0)),
    ("night_sky", 0, 0.95, (-2.0, -2.0, -2.0)),  # 0.95 on black, 0.04 on white
    ("blue_theme", 0, 0.50, (8.0, 0.0, -8.0)),  # blue minus red
    ("hatsune_miku", 4, 0.82, (0, 0, 0)),
    ("kaname_madoka", 4, 0.92, (0, 0, 0)),
]


def build_tiny_onnx_tagger(folder: Path) -> Path:
    """Write model.onnx and selected_tags.csv into `folder` (once) and return `folder`."""
    folder = Path(folder)
    if (folder / "model.onnx").exists():
        return folder
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "selected_tags.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, _, _) in enumerate(TAGS):
            writer.writerow([100000 + index, name, category, 5000 - index])

    weights = np.array([w for _, _, _, w in TAGS], dtype=np.float32).T  # (3, T)
    bias = np.array([_sigmoid_inverse(p) for _, _, p, _ in TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean_bgr"], keepdims=0),  # (N, 3)
        helper.make_node("Div", ["mean_bgr", "full_scale"], ["unit_bgr"]),
        helper.make_node("MatMul", ["unit_bgr", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "full_scale"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    tmp = folder / "model.onnx.tmp"
    onnx.save(model, tmp)
    tmp.replace(folder / "model.onnx")
    return folder
