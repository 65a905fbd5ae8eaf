"""Real-photo workloads for the benchmarks: crops, resizes and re-encodes of tests/fixtures/photos."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"


def make_files(folder: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    for i in range(count):
        image = rng.choice(sources)
        w, h = image.size
        cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        scale = rng.uniform(0.4, 1.0)
        crop = crop.resize((max(96, int(cw * scale)), max(96, int(ch * scale))))
        if rng.random() < 0.5:
            crop.save(folder / f"img{i:04d}.jpg", quality=rng.randint(70, 95))
        else:
            crop.save(folder / f"img{i:04d}.png")
