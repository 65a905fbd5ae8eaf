"""Training speed: seconds per step and peak memory, through the real training code (training.train).

  .venv/bin/python bench/train.py [--steps 20] [--threads 1] [--gpu-steps 30] [--diffusers-script PATH/train_dreambooth_lora.py]
  .venv/bin/python bench/train.py --processes N [--steps 20] [--threads 1] [--gpu-steps 30]

On a CPU shared with other work, pass --threads 1: torch's thread pool spinning against other
processes made a tiny step ~20× slower (2.3 s instead of 0.11 s) on the 2-core build machine.

CPU: the tiny SD of the tests (UNet 32/64 channels) at 64 px, LoRA batch 1 and 4, DreamBooth batch 1,
textual inversion and a hypernetwork (1, 2, 1) at batch 1 beside LoRA batch 1 (same model, data, steps).
GPU (when CUDA is present): an SD 1.5-sized pipeline with random weights (UNet 320–1280 channels,
CLIP ViT-L-sized text encoder, SD VAE) at 512 px, LoRA rank 4, batch 1 and 4, bf16, gradient
checkpointing, with textual inversion and hypernetwork rows at batch 4 beside LoRA batch 4; and, given --diffusers-script, the same settings through diffusers' own DreamBooth
LoRA example (wall time for the same number of steps, start-up included on both sides).
--processes N: only data parallelism, through the launcher `atelier train` uses (training.run; N > 1:
accelerate launch of N processes): one process at global batch 4·N against N processes at 4 each —
s/step, images/s and their ratio (start-up excluded: rank 0's steady s/step). CPU: the tiny SD, 64 px,
gloo, `--threads` per process; GPU (when CUDA is present): the SD 1.5-sized pipeline at 512 px bf16.
--processes 1 just reports one process's s/step through the launcher.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
# the other methods, beside LoRA on the same model (the tokenizer of the test models is one token per byte:
# a one-letter initializer is one token)
METHOD_ROWS = {
    "textual inversion": {"method": "textual_inversion",
                          "textual_inversion": {"placeholder_token": "<sks>", "initializer_token": "a"}},
    "hypernetwork": {"method": "hypernetwork", "hypernetwork": {"layer_structure": [1, 2, 1]}},
}


def kohya_folder(root: Path, names=("messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "MilkyWay_1080x1920.png")) -> Path:
    folder = root / "data" / "1_sks dog"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(PHOTOS / name, folder / name)
        (folder / name).with_suffix(".txt").write_text("sks dog, photo")
    return root / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(base: Path, data: Path, work: Path, label: str, **fields) -> dict:
    from training.config import load_config
    from training.train import run_training

    config = load_config({"base_model": str(base), "report_to": "none", "checkpointing_steps": 10**6,
                          "identifier": "sks", "class_word": "dog", **fields})
    out = work / label.replace(" ", "-")
    wall = time.perf_counter()
    result = run_training(config, data, out, cache_dir=work / "cache", log=lambda line: None)
    wall = time.perf_counter() - wall
    m = result["metrics"]
    row = {"run": label, "s/step": round(m["seconds_per_step_steady"], 4),
           "images/s": round(config.train_batch_size / m["seconds_per_step_steady"], 2), "wall_s": round(wall, 1),
           "peak_rss_mb": round(peak_rss_mb()), "peak_gpu_gb": m["peak_gpu_memory_gb"] and round(m["peak_gpu_memory_gb"], 2)}
    print(json.dumps(row), flush=True)
    return row


def measure_launched(base: Path, data: Path, work: Path, label: str, processes: int, threads: int, **fields) -> dict:
    """s/step of a run started like `atelier train` starts one (N processes for N > 1): rank 0's steady figure."""
    from flows.train import launcher, stream_process
    from training.config import load_config

    config = load_config({"base_model": str(base), "report_to": "none", "checkpointing_steps": 10**6,
                          "identifier": "sks", "class_word": "dog", "num_processes": processes, **fields})
    out = work / label.replace(" ", "-")
    out.mkdir(parents=True)
    job = out / "job.json"
    job.write_text(json.dumps({"config": config.model_dump(mode="json"), "data_dir": str(data), "output_dir": str(out),
                               "cache_dir": str(work / "cache")}))
    wall = time.perf_counter()
    code, tail = stream_process([*launcher(processes), str(job)], lambda line: None, env={"OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - wall
    if code:
        raise SystemExit(f"{label}: training failed:\n" + "\n".join(tail[-10:]))
    m = json.loads((out / "result.json").read_text())["metrics"]
    images = config.train_batch_size * processes * config.gradient_accumulation_steps
    row = {"run": label, "processes": processes, "global_batch": images, "s/step": round(m["seconds_per_step_steady"], 4),
           "images/s": round(images / m["seconds_per_step_steady"], 2), "wall_s": round(wall, 1),
           "peak_gpu_gb": m["peak_gpu_memory_gb"] and round(m["peak_gpu_memory_gb"], 2)}
    print(json.dumps(row), flush=True)
    return row


def data_parallel(args, work: Path, data: Path) -> None:
    """--processes N: one process at global batch 4·N vs N processes at 4 each, through the launcher."""
    import torch

    from tests.tiny_models.sd import build_tiny_sd

    n, threads = args.processes, args.threads or 1
    cases = []
    if torch.cuda.is_available():
        print(f"# GPU {torch.cuda.get_device_name()} × {torch.cuda.device_count()}: SD 1.5-sized UNet, random weights, "
              f"512 px, bf16, LoRA rank 4, {args.gpu_steps} steps")
        cases.append(("SD1.5-size LoRA", build_sd15_sized(work / "sd15-random"),
                      {"resolution": 512, "enable_bucket": False, "max_train_steps": args.gpu_steps,
                       "mixed_precision": "bf16", "gradient_checkpointing": True, "rank": 4}))
    else:
        print(f"# CPU, no CUDA device: tiny SD (UNet 32/64), 64 px, gloo, {args.steps} steps, {threads} torch thread(s) "
              f"per process, {os.cpu_count()} cores")
        cases.append(("tiny LoRA", build_tiny_sd(work),
                      {"resolution": 64, "enable_bucket": False, "max_train_steps": args.steps}))
    for name, base, fields in cases:
        fields["repeats"] = 2 * n  # 4 photos × 2N: every global batch of 4·N is full, every process busy
        one = measure_launched(base, data, work, f"{name} 1 process b{4 * n}", 1, threads, train_batch_size=4 * n, **fields)
        if n > 1:
            many = measure_launched(base, data, work, f"{name} {n} processes b4", n, threads, train_batch_size=4, **fields)
            print(f"# ratio: images/s {n} processes / 1 process (same global batch {4 * n}) = "
                  f"{many['images/s'] / one['images/s']:.2f}")


def build_sd15_sized(folder: Path) -> Path:
    """A StableDiffusionPipeline with SD 1.5's architecture and random weights (no download)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.tiny_models.sd import _tokenizer_folder

    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # defaults = SD 1.5's UNet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(folder.parent / "tokenizer-src"))
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, vocab_size=49408, projection_dim=768,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder, safe_serialization=True)
    return folder


def run_diffusers_example(script: Path, base: Path, data: Path, work: Path, batch: int, steps: int) -> dict:
    """Wall time of diffusers' train_dreambooth_lora.py with the same settings (start-up included)."""
    out = work / f"diffusers-b{batch}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "bf16",
               str(script), "--pretrained_model_name_or_path", str(base), "--instance_data_dir", str(data / "1_sks dog"),
               "--instance_prompt", "sks dog", "--resolution", "512", "--train_batch_size", str(batch),
               "--max_train_steps", str(steps), "--learning_rate", "1e-4", "--rank", "4", "--mixed_precision", "bf16",
               "--gradient_checkpointing", "--output_dir", str(out), "--seed", "0", "--checkpointing_steps", "1000000"]
    wall = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - wall
    row = {"run": f"diffusers example LoRA b{batch}", "wall_s": round(wall, 1), "rc": done.returncode}
    if done.returncode:
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--diffusers-script", type=Path, help="path to diffusers' examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--processes", type=int, help="only data parallelism: N processes vs 1 at the same global batch")
    args = parser.parse_args()

    import torch

    from tests.tiny_models.sd import build_tiny_sd

    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="atelier-bench-train-"))
    try:
        data = kohya_folder(work)
        if args.processes:
            data_parallel(args, work, data)
            return
        tiny = build_tiny_sd(work)
        print(f"# CPU, tiny SD (UNet 32/64), 64 px, {args.steps} steps, torch threads {torch.get_num_threads()}")
        small = {"resolution": 64, "enable_bucket": False, "max_train_steps": args.steps}
        b1 = measure(tiny, data, work, "tiny LoRA b1", train_batch_size=1, **small)
        b4 = measure(tiny, data, work, "tiny LoRA b4", train_batch_size=4, **small)
        measure(tiny, data, work, "tiny LoRA b4 +grad-ckpt +min-SNR +EMA", train_batch_size=4, gradient_checkpointing=True,
                snr_gamma=5.0, use_ema=True, **small)
        db = measure(tiny, data, work, "tiny DreamBooth b1", method="dreambooth", train_batch_size=1, **small)
        print(f"# ratios: LoRA images/s b4 / b1 = {b4['images/s'] / b1['images/s']:.2f}; "
              f"DreamBooth s/step / LoRA s/step (b1) = {db['s/step'] / b1['s/step']:.2f}")
        methods = [measure(tiny, data, work, f"tiny {name} b1", train_batch_size=1, **fields, **small)
                   for name, fields in METHOD_ROWS.items()]
        print("# ratios: s/step / LoRA s/step (b1): " + "; ".join(
            f"{name} {row['s/step'] / b1['s/step']:.2f}" for name, row in zip(METHOD_ROWS, methods)))
        if not torch.cuda.is_available():
            print("# GPU: no CUDA device here — the SD 1.5-sized 512 px bf16 runs (batch 1 and 4) and the diffusers "
                  "example comparison are skipped; run this script on a GPU machine for them")
            return
        print(f"# GPU {torch.cuda.get_device_name()}: SD 1.5-sized UNet, random weights, 512 px, bf16, {args.gpu_steps} steps")
        sd15 = build_sd15_sized(work / "sd15-random")
        big = {"resolution": 512, "enable_bucket": False, "max_train_steps": args.gpu_steps, "mixed_precision": "bf16",
               "gradient_checkpointing": True, "rank": 4}
        rows = [measure(sd15, data, work, f"SD1.5-size LoRA b{b}", train_batch_size=b, **big) for b in (1, 4)]
        print(f"# ratio: images/s b4 / b1 = {rows[1]['images/s'] / rows[0]['images/s']:.2f}")
        big_methods = [measure(sd15, data, work, f"SD1.5-size {name} b4", train_batch_size=4, **fields, **big)
                       for name, fields in METHOD_ROWS.items()]
        print("# ratios: s/step / LoRA s/step (b4): " + "; ".join(
            f"{name} {row['s/step'] / rows[1]['s/step']:.2f}" for name, row in zip(METHOD_ROWS, big_methods)))
        if args.diffusers_script:
            for batch, ours in zip((1, 4), rows):
                theirs = run_diffusers_example(args.diffusers_script, sd15, data, work, batch, args.gpu_steps)
                if not theirs["rc"]:
                    print(f"# b{batch}: atelier wall {ours['wall_s']} s vs diffusers example {theirs['wall_s']} s "
                          f"(ratio {ours['wall_s'] / theirs['wall_s']:.2f})")
        else:
            print("# diffusers example comparison skipped: pass --diffusers-script PATH/train_dreambooth_lora.py")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
