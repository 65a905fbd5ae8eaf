"""Masks that travel with an image through the pipeline (StepOutput.masks / Item.masks).

A mask is an "L" image the size of the image it describes, 255 inside its region. Names:
"generated" (pixels a step invented: outpaint fill, inpainted regions — training gives them zero
loss weight), "face" (a face region, for face_loss_weight); other names are free.

How masks follow a step (`carry_masks`):
- a mask the step returns itself wins (a geometric step that knows its transform — outpaint's
  padding — returns the earlier masks transformed);
- the step made no new image, or one of the same size: earlier masks carry over unchanged;
- the new image is a uniform rescale (upscale: same aspect ratio within a pixel): earlier masks
  are resized with nearest-neighbour sampling (still 0/255);
- any other change of size (a crop, a rotation the step does not describe): the mask is dropped and
  the step's meta lists it under "masks_dropped" — a wrong mask is worse than none.
"""

from __future__ import annotations

import re

from PIL import Image

GENERATED = "generated"
FACE = "face"


def as_mask(mask: Image.Image, size: tuple[int, int], name: str, step: str) -> Image.Image:
    """The mask as "L" of exactly `size`; a wrong size is the step's bug and fails naming step and mask."""
    if not re.fullmatch(r"[a-z0-9_-]{1,40}", name):
        raise ValueError(f"step {step!r}: mask name {name!r}: use lowercase letters, digits, '_' or '-'")
    if mask.size != tuple(size):
        raise ValueError(f"step {step!r}: mask {name!r} is {mask.size[0]}x{mask.size[1]}, "
                         f"the image is {size[0]}x{size[1]}")
    return mask if mask.mode == "L" else mask.convert("L")


def _uniform_scale(old: tuple[int, int], new: tuple[int, int]) -> bool:
    """True when `new` is `old` scaled by one factor (each side within a pixel of rounding)."""
    factor = new[0] / old[0]
    return abs(old[1] * factor - new[1]) <= 1.0 and abs(new[1] / old[1] * old[0] - new[0]) <= 1.0


def carry_masks(incoming: dict[str, Image.Image], old_size: tuple[int, int], new_image: Image.Image | None,
                own: dict[str, Image.Image], step: str) -> tuple[dict[str, Image.Image], list[str]]:
    """The masks of a step's output image: (masks by name, names of earlier masks dropped)."""
    size = new_image.size if new_image is not None else tuple(old_size)
    masks = {name: as_mask(mask, size, name, step) for name, mask in own.items()}
    dropped = []
    for name, mask in incoming.items():
        if name in masks:
            continue
        if mask.size == size:
            masks[name] = mask
        elif _uniform_scale(mask.size, size):
            masks[name] = mask.resize(size, Image.Resampling.NEAREST)
        else:
            dropped.append(name)
    return masks, sorted(dropped)


def pad_mask(mask: Image.Image, canvas: tuple[int, int], offset: tuple[int, int], fill: int) -> Image.Image:
    """`mask` pasted at `offset` on a `canvas`-sized mask filled with `fill` (0 or 255)."""
    out = Image.new("L", canvas, fill)
    out.paste(mask.convert("L"), offset)
    return out

