"""A random-weight RetinaFace-ResNet50 in the `detection_Resnet50_Final.pth` layout ("module."-prefixed keys)."""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0


def build_retinaface(directory: Path) -> Path:
    from facexlib.detection.retinaface import RetinaFace

    path = Path(directory) / "detection_Resnet50_Final.pth"
    if not path.exists():
        torch.manual_seed(SEED)
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path
