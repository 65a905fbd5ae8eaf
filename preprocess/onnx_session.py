"""Opening an ONNX model file for CPU inference: one thread per worker, errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

THREADS = int(os.environ.get("ATELIER_DETECTOR_THREADS", "1"))  # per worker: 2 threads ran 5–10× slower


def onnx_session(path: Path, what: str, threads: int = THREADS):
    """An onnxruntime CPU session on `path`; a missing, truncated or non-ONNX file raises ValueError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} model file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own InvalidProtobuf / Fail / InvalidGraph
        raise ValueError(f"{path}: not a readable ONNX {what} (truncated or another kind of file: "
                         f"{str(error).strip().splitlines()[0][:200]})") from None
