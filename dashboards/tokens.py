"""A caption's CLIP token count against the 75-token window Stable Diffusion's text encoder reads.

With a CLIP tokenizer folder on disk (ATELIER_CLIP_TOKENIZER, or $ATELIER_MODELS/clip-tokenizer:
a `save_pretrained` folder with tokenizer.json or vocab.json + merges.txt, or an SD model folder with
its tokenizer/) the count
is exact, through transformers' CLIPTokenizer. Without one it is an approximation of CLIP's own
pre-tokenizer: every run of letters, every digit and every run of punctuation is a token, and a word
longer than 7 letters counts one token per 7 letters (CLIP's 49k-word BPE vocabulary holds most
common English words whole and splits rare long ones). Captions of ordinary English come within a
few tokens of the exact count; that is enough to see a caption run past the window.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path

WINDOW = 75  # 77 positions minus the start and end tokens
# CLIP's pre-tokenizer (openai/CLIP simple_tokenizer.py), with \p{L} / \p{N} as letters / digits
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
LETTERS_PER_TOKEN = 7


def tokenizer_folder(models_dir: Path | None = None) -> Path | None:
    """The CLIP tokenizer folder to count with, or None (then the approximation is used)."""
    configured = os.environ.get("ATELIER_CLIP_TOKENIZER")
    candidates = [Path(configured)] if configured else []
    if models_dir is not None:
        candidates.append(models_dir / "clip-tokenizer")
    candidates += [c / "tokenizer" for c in candidates]  # a Stable Diffusion model folder
    return next((c for c in candidates if (c / "vocab.json").is_file() or (c / "tokenizer.json").is_file()), None)


@lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)  # positional vocab/merges paths build an empty vocab


def approximate_count(text: str) -> int:
    return sum(math.ceil(len(p) / LETTERS_PER_TOKEN) if p[0].isalpha() else 1
               for p in _PIECES.findall(text.lower()))


def count_tokens(text: str, models_dir: Path | None = None) -> dict:
    """{"count", "window": 75, "over": tokens past the window, "exact": whether a real tokenizer counted}."""
    folder = tokenizer_folder(models_dir)
    if folder is not None:
        count = len(_tokenizer(str(folder))(text, add_special_tokens=False)["input_ids"])
    else:
        count = approximate_count(text)
    return {"count": count, "window": WINDOW, "over": max(0, count - WINDOW), "exact": folder is not None}
