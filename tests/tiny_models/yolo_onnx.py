"""A tiny detector ONNX in the YOLOv8 export layout: input (1, 3, 64, 64), output (1, 4 + classes, 64).

One strided convolution (random weights, seeded) gives, per 8 × 8 cell, a box (sigmoid × 64 px:
centre x, y, width, height) and a sigmoid score per class; the class names are in the metadata
("names": "{0: 'hand', 1: 'person'}"), as `yolo export format=onnx` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 64
NAMES = {0: "hand", 1: "person"}


def build_tiny_yolo_onnx(directory: Path, bias: float = 2.0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(directory) / "tiny-yolov8-hand.onnx"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    channels = 4 + len(NAMES)
    weights = (rng.standard_normal((channels, 3, 8, 8)) * 0.05).astype(np.float32)
    conv_bias = np.concatenate([[0, 0, -1.5, -1.5], [bias] * len(NAMES)]).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["grid"], strides=[8, 8], kernel_shape=[8, 8]),
        helper.make_node("Reshape", ["grid", "shape"], ["flat"]),
        helper.make_node("Sigmoid", ["flat"], ["unit"]),
        helper.make_node("Split", ["unit", "split"], ["box_unit", "scores"], axis=1),
        helper.make_node("Mul", ["box_unit", "pixels"], ["boxes"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    init = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(conv_bias, "b"),
            numpy_helper.from_array(np.array([1, channels, -1], np.int64), "shape"),
            numpy_helper.from_array(np.array([4, len(NAMES)], np.int64), "split"),
            numpy_helper.from_array(np.array(float(SIZE), np.float32), "pixels")]
    graph = helper.make_graph(nodes, "tiny-yolov8", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, channels, 64])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"names": str(NAMES), "imgsz": str([SIZE, SIZE]), "task": "detect"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
