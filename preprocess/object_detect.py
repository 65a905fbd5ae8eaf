"""Object detection from an ONNX file in the YOLOv8 export layout (ADetailer's face/hand/person models).

`yolo export format=onnx` writes one input (1, 3, S, S) RGB in [0, 1], letterboxed with grey 114,
and one output (1, 4 + classes, anchors): box centre x, y, width, height in input pixels, then a
score per class; the class names are in the file's metadata ("names": "{0: 'hand'}"). Runs on
onnxruntime (CPU, or CUDA when its provider is there); boxes come back in the image's pixels after
non-maximum suppression.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np


class YoloOnnxDetector:
    def __init__(self, path: Path, confidence: float = 0.3, iou: float = 0.5):
        import onnxruntime

        path = Path(path)
        if path.suffix != ".onnx":
            raise ValueError(f"{path}: object detectors are read from YOLO ONNX exports (.onnx); "
                             f"convert a .pt with `yolo export format=onnx`")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or len(outputs[0].shape) != 3:
            raise ValueError(f"{path}: not a YOLOv8-layout detector (input {shape}, output {outputs[0].shape})")
        self.input_name = inputs[0].name
        self.size = int(shape[2]) if isinstance(shape[2], int) else 640
        names = self.session.get_modelmeta().custom_metadata_map.get("names")
        self.names = {int(k): str(v) for k, v in ast.literal_eval(names).items()} if names else {}
        self.confidence, self.iou = confidence, iou
        self.backend = f"yolo-onnx:{path.stem}"

    def detect(self, rgb: np.ndarray) -> list[dict]:
        """[{box: [x0, y0, x1, y1], label, score}] in `rgb`'s pixels, best first."""
        height, width = rgb.shape[:2]
        scale = self.size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = (self.size - new_w) // 2, (self.size - new_h) // 2
        canvas = np.full((self.size, self.size, 3), 114, np.uint8)
        canvas[top:top + new_h, left:left + new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255
        rows = self.session.run(None, {self.input_name: blob})[0][0].T  # (anchors, 4 + classes)
        scores = rows[:, 4:]
        classes, best = scores.argmax(1), scores.max(1)
        keep = best >= self.confidence
        rows, classes, best = rows[keep], classes[keep], best[keep]
        boxes = []  # x, y, w, h in the image's pixels
        for cx, cy, w, h in rows[:, :4]:
            x0 = np.clip((cx - w / 2 - left) / scale, 0, width)
            y0 = np.clip((cy - h / 2 - top) / scale, 0, height)
            x1 = np.clip((cx + w / 2 - left) / scale, 0, width)
            y1 = np.clip((cy + h / 2 - top) / scale, 0, height)
            boxes.append([float(x0), float(y0), float(x1 - x0), float(y1 - y0)])
        chosen = cv2.dnn.NMSBoxes(boxes, best.tolist(), self.confidence, self.iou) if boxes else []
        found = []
        for index in np.asarray(chosen).reshape(-1):
            x, y, w, h = boxes[index]
            if w < 1 or h < 1:
                continue
            found.append({"box": [round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)],
                          "label": self.names.get(int(classes[index]), str(int(classes[index]))),
                          "score": round(float(best[index]), 3)})
        return sorted(found, key=lambda f: -f["score"])
