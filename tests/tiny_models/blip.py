"""A tiny BLIP captioner (BlipForConditionalGeneration + BlipProcessor) saved with save_pretrained.

The folder has the layout of Salesforce/blip-image-captioning-base: config.json,
model.safetensors, processor/tokenizer files (a BERT word-piece tokenizer with a [DEC] start
token). Weights are random but seeded, so its captions are nonsense words from a small
vocabulary, the same for the same image every time.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
WORDS = (
    "a photo of the man woman person ball fish field sky night star stars city street dog cat "
    "with and in on at playing standing green blue red dark bright small large two people"
).split()


def build_tiny_blip(folder: Path, *, seed: int = 0) -> Path:
    """Save the tiny captioner into `folder` (once) and return `folder`."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: index for index, token in enumerate(specials + WORDS + ["."])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = BlipConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab),
            max_position_embeddings=64,
            encoder_hidden_size=32,
            initializer_range=0.2,
            bos_token_id=vocab["[DEC]"],
            pad_token_id=vocab["[PAD]"],
            sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.5),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)  # config.json last: its presence marks a finished folder
    return folder
