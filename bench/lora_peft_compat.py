"""Does `lora_peft/` load in the diffusers + transformers that sd-scripts pins, at the kohya file's strength?

    python bench/lora_peft_compat.py make /tmp/compat          # installed libraries: a tiny LoRA run
    pip install --no-deps --target /tmp/old-libs diffusers==0.32.1 transformers==4.54.1 \\
        huggingface-hub==0.34.3 'tokenizers>=0.21,<0.22' peft==0.15.2 accelerate==1.6.0
    PYTHONPATH=/tmp/old-libs python bench/lora_peft_compat.py check /tmp/compat

`check` loads the kohya file, `lora_peft/`, and the same weights in the layout Atelier wrote before
(transformers-5 text-encoder keys, alpha not baked in), and prints each one's output change as a
ratio of the kohya file's (1.0 = the same strength). It runs under any diffusers, the installed one too.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make(root: Path) -> None:
    from tests.tiny_models.sd import build_tiny_sd
    from training.config import load_config
    from training.train import run_training

    sd = build_tiny_sd(root)
    data = root / "data" / "3_sks dog"
    data.mkdir(parents=True, exist_ok=True)
    photos = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
    for name in ("messi5.jpg", "HappyFish.jpg"):
        shutil.copy(photos / name, data / name)
        (data / name).with_suffix(".txt").write_text("sks dog, thing")
    config = load_config({"base_model": str(sd), "resolution": 64, "enable_bucket": False, "max_train_steps": 4,
                          "learning_rate": 1e-3, "report_to": "none", "train_text_encoder": True, "rank": 4,
                          "lora_alpha": 2, "identifier": "sks", "class_word": "dog"})
    shutil.rmtree(root / "out", ignore_errors=True)
    result = run_training(config, root / "data", root / "out", cache_dir=root / "cache", log=lambda s: None)
    print(f"kohya file {result['outputs']['lora']['path']}; peft folder {result['outputs']['lora_peft']['path']}")


def check(root: Path) -> None:
    import diffusers
    import torch
    import transformers
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTokenizer

    from tests.tiny_models.sd import _tokenizer_folder

    print(f"diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    kohya = next((root / "out").glob("*.safetensors"))
    new = root / "out" / "lora_peft"
    old = root / "old_layout"
    old.mkdir(exist_ok=True)
    scale = 2 / 4  # the run's lora_alpha / rank
    state = load_file(str(new / "pytorch_lora_weights.safetensors"))
    save_file({k.replace("text_encoder.text_model.", "text_encoder."): v / scale if ".lora_B." in k else v
               for k, v in state.items()}, str(old / "pytorch_lora_weights.safetensors"))
    # transformers 5 saves only tokenizer.json; transformers 4's slow CLIPTokenizer wants vocab.json + merges.txt
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(root / "tokenizer-files"))
    pipe = StableDiffusionPipeline.from_pretrained(root / "tiny-sd", local_files_only=True, tokenizer=tokenizer,
                                                   safety_checker=None)
    ids = tokenizer(["sks dog, thing"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def outputs():
        hidden = pipe.text_encoder(ids)[0]
        return hidden, pipe.unet(latents, torch.tensor([500]), hidden).sample

    base = outputs()
    pipe.load_lora_weights(str(kohya))
    reference = outputs()
    pipe.unload_lora_weights()
    for label, folder in (("lora_peft/ (now)", new), ("old layout", old)):
        try:
            pipe.load_lora_weights(str(folder))
            got = outputs()
            ratios = [((g - b).norm() / (r - b).norm()).item() for b, r, g in zip(base, reference, got)]
            print(f"{label}: text encoder {ratios[0]:.4f}x, unet {ratios[1]:.4f}x the kohya file's change")
        except Exception as error:  # noqa: BLE001 — the old layout crashes diffusers 0.32 + transformers 4
            print(f"{label}: {type(error).__name__}: {str(error)[:160]}")
        pipe.unload_lora_weights()


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
