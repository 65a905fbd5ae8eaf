"""Face detection backends on the real fixture photos: seconds per image and faces found / expected.

    .venv/bin/python bench/faces.py [--repeat 3]

Photos: obama, biden, astronaut (tests/fixtures/photos), obama2, obama_partial_face
(tests/fixtures/faces): one face each; messi5.jpg (one face; a 17 px crowd face below the 24 px
minimum is not counted) and the six photos without faces. Each weight-free backend of the align step runs with one thread (as every
worker does), detection only (`mode: none`), then with the FFHQ-aligned crop (`mode: face`, eyes
refined by dlib's 5-point model) and with 68 landmarks. "eyes" is the largest eye tilt that an
independent detector (dlib HOG + 68 points) measures on the aligned crops (not on a crop cut by
the photo's border: its mirrored half misleads that detector). Also timed: the identity
embedding (dlib ResNet) and the NudeNet rating. Ratios are against the OpenCV cascade, the
weight-free default before yuface. RetinaFace is not in the table: no real weights on this machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ATELIER_DETECTOR_THREADS", "1")
FIXTURES = ROOT / "tests" / "fixtures"
EXPECTED = {**{f"photos/{n}": 1 for n in ("obama.jpg", "biden.jpg", "astronaut.png", "messi5.jpg")},
            "faces/obama2.jpg": 1, "faces/obama_partial_face.jpg": 1,
            **{f"photos/{n}": 0 for n in ("HappyFish.jpg", "leuvenB.jpg", "ellipses.jpg", "MilkyWay_1080x1920.png",
                                          "FlyingKonqui_2560x1600.png", "Elarun_2560x1600.png")}}
BACKENDS = ["opencv-cascade", "yuface", "dlib-hog"]


def timed(step, items, repeat: int) -> tuple[float, list]:
    step.run(items[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        outs = step.run(items)
    return (time.perf_counter() - start) / repeat / len(items), outs


def eye_tilt(images) -> float:
    """Largest |eye angle| (degrees) dlib's HOG + 68-point model measures on the crops (nan if it finds none)."""
    import dlib
    import numpy as np

    from preprocess.face_align import eye_angle
    from preprocess.face_landmarks import dlib_models, five_from_68

    hog, models = dlib.get_frontal_face_detector(), dlib_models()
    worst = 0.0
    for image in images:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        rects = hog(rgb, 0)
        if not rects:
            return math.nan
        r = max(rects, key=lambda r: r.width())
        eyes = five_from_68(models.shape(rgb, [r.left(), r.top(), r.right(), r.bottom()], 68))[:2]
        worst = max(worst, abs(eye_angle(eyes)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    os.environ.setdefault("ATELIER_HOME", tempfile.mkdtemp(prefix="bench-faces-"))
    from preprocess.load import load_image_file
    from preprocess.steps import Item, load_step
    from store.registry import load_registry

    registry = load_registry()
    names = list(EXPECTED)
    images = {n: load_image_file(FIXTURES / n).image for n in names}
    items = [Item(image=images[n]) for n in names]
    portraits = [n for n in names if EXPECTED[n]]
    expected = sum(EXPECTED.values())
    rows, base = [], None
    for backend in BACKENDS:
        step = load_step("align", {"mode": "none", "fallback": backend}, registry)
        seconds, outs = timed(step, items, args.repeat)
        found = sum(min(len(o.meta["faces"]), EXPECTED[n]) for n, o in zip(names, outs) if EXPECTED[n])
        extra = sum(max(0, len(o.meta["faces"]) - EXPECTED[n]) for n, o in zip(names, outs))
        aligned = load_step("align", {"mode": "face", "fallback": backend}, registry)
        crop_seconds, crops = timed(aligned, [Item(image=images[n]) for n in portraits], 1)
        tilt = eye_tilt([c.image for c in crops if c.meta["crop"] and c.meta["crop"]["by"] == "face"
                         and not c.meta["crop"]["cut_by_border"]])
        base = base or seconds
        rows.append((backend, seconds, found, extra, crop_seconds, tilt, seconds / base))
    print(f"{'backend':16} {'s/image':>8} {'found':>7} {'extra':>6} {'align s/img':>12} {'eyes °':>7} {'× cascade':>10}")
    for backend, seconds, found, extra, crop_seconds, tilt, ratio in rows:
        print(f"{backend:16} {seconds:8.3f} {found:>3}/{expected:<3} {extra:6d} {crop_seconds:12.3f} {tilt:7.2f} {ratio:10.2f}")
    step68 = load_step("align", {"mode": "face", "landmarks": 68}, registry)
    seconds68, crops68 = timed(step68, [Item(image=images[n]) for n in portraits], 1)
    tilt68 = eye_tilt([c.image for c in crops68 if not c.meta["crop"]["cut_by_border"]])
    print(f"{'yuface + 68 pts':16} {'':8} {'':7} {'':6} {seconds68:12.3f} {tilt68:7.2f}")
    identity = load_step("identity", {}, registry)
    seconds_id, _ = timed(identity, [Item(image=images[n]) for n in portraits], 1)
    rating = load_step("rating", {}, registry)
    seconds_rating, _ = timed(rating, items, 1)
    print(f"identity (detect + dlib ResNet): {seconds_id:.3f} s/image; rating (NudeNet 320n): {seconds_rating:.3f} s/image")


if __name__ == "__main__":
    main()
