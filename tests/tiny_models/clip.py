"""A tiny CLIP (model + processor + tokenizer) saved with save_pretrained, for tests of CLIP-based code.

`build_tiny_clip(folder)` writes a real transformers folder (config.json, model.safetensors,
processor_config.json, tokenizer files) that `CLIPModel.from_pretrained` and
`CLIPProcessor.from_pretrained` load like openai/clip-vit-large-patch14. Weights are random but
seeded, so the same folder is built every time; building a second time into the same folder is a no-op.
"""

from __future__ import annotations

from pathlib import Path

PROJECTION_DIM = 32
IMAGE_SIZE = 32
_MERGES = ["t h", "th e</w>", "p h", "o t", "ph ot", "phot o</w>", "o f</w>", "c a", "ca t</w>"]


def build_tiny_clip_tokenizer(folder: Path):
    """A byte-level CLIP BPE tokenizer (every byte as a token, a few merges), saved to `folder`."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in _MERGES]:
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # transformers 5: pass vocab/merges as values (positional file paths build an empty vocabulary)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in _MERGES])
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_clip(folder: Path, *, projection_dim: int = PROJECTION_DIM, seed: int = 0) -> Path:
    """Save a tiny random-weight CLIPModel + CLIPProcessor into `folder` (once) and return `folder`.

    Image size 32 px, patch 8, 2 layers of width 32 in each tower, image/text embeddings of
    `projection_dim` (default 32).
    """
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_clip_tokenizer(folder)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8, num_channels=3),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)  # config.json last: its presence marks a finished folder
    return folder
