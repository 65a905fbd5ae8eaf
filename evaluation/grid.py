"""A labelled grid of samples: one row per prompt, the trained model's seeds beside the base's."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 220
HEADER = 28
CELL_MAX = 256  # cells are shown at most this wide (big samples are scaled down)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def sample_grid(samples: list, prompts: list[str], seeds: list[int], models: tuple[str, ...] = ("trained", "base")) -> Image.Image:
    """Grid image of `samples` (objects with .model, .prompt, .seed, .image); missing cells stay grey."""
    by_key = {(s.model, s.prompt, s.seed): s.image for s in samples}
    first = next(iter(by_key.values()))
    scale = min(1.0, CELL_MAX / max(first.size))
    cw, ch = max(1, int(first.width * scale)), max(1, int(first.height * scale))
    columns = [(model, seed) for model in models for seed in seeds]
    gap = 8  # between the trained and the base half
    width = LABEL_WIDTH + cw * len(columns) + gap * (len(models) - 1)
    grid = Image.new("RGB", (width, HEADER + ch * len(prompts)), (235, 235, 235))
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for index, (model, seed) in enumerate(columns):
        x = LABEL_WIDTH + index * cw + gap * models.index(model)
        draw.text((x + 4, 6), f"{model} · seed {seed}", fill=(20, 20, 20), font=font)
        for row, prompt in enumerate(prompts):
            image = by_key.get((model, prompt, seed))
            if image is not None:
                grid.paste(image.convert("RGB").resize((cw, ch)), (x, HEADER + row * ch))
    for row, prompt in enumerate(prompts):
        lines = textwrap.wrap(prompt, width=32)[: max(1, ch // 14)]
        draw.multiline_text((6, HEADER + row * ch + 6), "\n".join(lines), fill=(20, 20, 20), font=font)
    return grid
