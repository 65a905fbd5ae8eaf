"""The tiny SD loads through diffusers' real loaders, as a folder and as an LDM single file."""

import torch


def test_single_file_loads_to_the_same_weights_as_the_folder(tiny_sd_dir, tiny_sd_file):
    from diffusers import StableDiffusionPipeline

    folder = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    single = StableDiffusionPipeline.from_single_file(str(tiny_sd_file), config=str(tiny_sd_dir), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), name
    image = folder("a photo", num_inference_steps=2, height=64, width=64,
                   generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
