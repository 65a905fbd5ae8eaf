"""A tiny ArcFace-style face embedder as ONNX, in the layout of insightface's `w600k_r50.onnx`.

NCHW float input named "input.1" (RGB scaled to (x − 127.5) / 127.5, batch 1, 32 px instead of
112) → one 16-wide embedding: two strided convolutions with ReLU, global average pooling and a
linear layer. Weights are random but seeded, so different faces give different embeddings.
"""

from __future__ import annotations

from pathlib import Path

SIZE = 32
WIDTH = 16


def build_tiny_face_embedder(path: Path, *, seed: int = 0) -> Path:
    """Write the model to `path` (a .onnx file, once) and return `path`."""
    path = Path(path)
    if path.exists():
        return path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    conv2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    fc = rng.normal(0, 0.5, (WIDTH, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["683"], transB=1),
    ]
    initializers = [numpy_helper.from_array(conv1, "conv1"), numpy_helper.from_array(conv2, "conv2"),
                    numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(WIDTH, np.float32), "fc_bias")]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    tmp.replace(path)
    return path
