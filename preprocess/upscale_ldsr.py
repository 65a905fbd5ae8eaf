"""LDSR, an `upscale` backend: diffusers' LDMSuperResolutionPipeline (×4) from a local folder.

The folder is `CompVis/ldm-super-resolution-4x-openimages` as saved by diffusers (vqvae, unet,
scheduler). The pipeline is wrapped as a network (NCHW in [0, 1] → ×4), so the upscale step tiles
it like any other: each tile is padded to a multiple of 32 (what the model's UNet needs) and every
tile's noise comes from its own generator seeded with `seed`, so a result is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch


def is_ldsr_folder(path: Path) -> bool:
    index = Path(path) / "model_index.json"
    return index.is_file() and "LDMSuperResolutionPipeline" in index.read_text()


class LdsrNetwork(torch.nn.Module):
    """LDMSuperResolutionPipeline as a ×4 network on [0, 1] NCHW tensors."""

    scale = 4

    def __init__(self, folder: Path, steps: int, eta: float, seed: int):
        super().__init__()
        from diffusers import LDMSuperResolutionPipeline

        self.pipe = LDMSuperResolutionPipeline.from_pretrained(str(folder), local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.unet = self.pipe.unet  # so .parameters() (and the device the tiler reads) are the pipeline's
        self.steps, self.eta, self.seed = steps, eta, seed

    def to(self, *args, **kwargs):
        self.pipe.to(*args, **kwargs)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32
        if pad_h or pad_w:  # reflect needs the pad below the side; replicate covers tiny edge tiles
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        generator = torch.Generator("cpu").manual_seed(self.seed)
        # DDIM's eta noise is drawn from the global RNG (the pipeline passes no generator to the scheduler):
        # seed it too, inside a fork so the caller's RNG state is left as it was
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            out = self.pipe(image=x * 2 - 1, num_inference_steps=self.steps, eta=self.eta, generator=generator,
                            output_type="pt").images
        out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
        return out[..., : height * 4, : width * 4]


def load_ldsr(folder: Path, steps: int, eta: float, seed: int) -> LdsrNetwork:
    network = LdsrNetwork(folder, steps, eta, seed)
    if torch.cuda.is_available():
        network.to("cuda")
    return network.eval()
