"""Atelier's LoRA trainer beside diffusers' own example script, same model, same settings, same run.

  python bench/train_vs_diffusers.py --device cpu  --family sd15 --resolution 64   --batch 1 --steps 6
  python bench/train_vs_diffusers.py --device cuda --family sd15 --resolution 512  --batch 4 --steps 30
  python bench/train_vs_diffusers.py --device cuda --family sdxl --resolution 1024 --batch 2 --steps 20

(bench/gpu.sh runs the GPU rows; bench/gpu.sh --cpu the CPU row.) The model is the real architecture with
random weights (tests/tiny_models/full_size.py: SD 1.5 or SDXL, no download), built once into --work.
Per row, in a fresh subprocess each (so peak memory is the row's own): gradient checkpointing off and on,
LoRA rank 4 on the UNet's attention (to_q/k/v/out.0, both sides' default), AdamW (8-bit with bitsandbytes
on CUDA), bf16 on CUDA / fp32 on CPU, constant lr 1e-4, seed 0:
- atelier: training.train.run_training; s/step is its steady figure (steps after the first);
- diffusers example: examples/text_to_image/train_text_to_image_lora.py (SDXL: ..._lora_sdxl.py) of
  diffusers v0.40.0, kept in bench/third_party/diffusers/ (ignored by git, never committed; copy it there
  from the diffusers repository), on an imagefolder copy of the same images; s/step is tqdm's smoothed rate
  at the end of its progress bar. Its Python dependency `datasets` (not one of Atelier's) is looked up in
  bench/third_party/pylib (pip install --target bench/third_party/pylib --no-deps datasets dill
  multiprocess pandas pyarrow xxhash) when it is not importable.
images/s = batch / s/step. MFU = FLOPs of one training step (UNet forward + backward with the LoRA, text
encoder forward; counted once with torch.utils.flop_counter.FlopCounterMode, without gradient
checkpointing's recomputation, so both rows are credited the same useful work) / s/step / peak, with peak
989 TFLOPS (H200 dense bf16); on CPU no peak is assumed and achieved GFLOP/s is printed instead.
Ratio = atelier s/step / example s/step (goal ≤ 0.9). Figures are printed as JSON lines, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
THIRD_PARTY = ROOT / "bench" / "third_party"
SCRIPTS = {"sd15": THIRD_PARTY / "diffusers" / "train_text_to_image_lora.py",
           "sdxl": THIRD_PARTY / "diffusers" / "train_text_to_image_lora_sdxl.py"}
H200_BF16_DENSE = 989e12
IMAGES = ("messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "MilkyWay_1080x1920.png")


def build_model(family: str, work: Path) -> Path:
    from tests.tiny_models.full_size import build_sd15_full, build_sdxl_full

    return (build_sd15_full if family == "sd15" else build_sdxl_full)(work)


def data_folders(work: Path) -> tuple[Path, Path]:
    """The same images as a kohya folder (Atelier) and an imagefolder with metadata.jsonl (the example)."""
    kohya, imagefolder = work / "kohya", work / "imagefolder"
    (kohya / "1_sks dog").mkdir(parents=True, exist_ok=True)
    imagefolder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in IMAGES:
        shutil.copy(PHOTOS / name, kohya / "1_sks dog" / name)
        (kohya / "1_sks dog" / name).with_suffix(".txt").write_text("sks dog")
        shutil.copy(PHOTOS / name, imagefolder / name)
        rows.append(json.dumps({"file_name": name, "text": "sks dog"}))
    (imagefolder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return kohya, imagefolder


def step_flops(base: Path, family: str, resolution: int, batch: int, device: str) -> float:
    """FLOPs of one LoRA training step's model work (text encoder forward, UNet forward + backward)."""
    import torch
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    from training.models import load_base_model

    model = load_base_model(str(base), None, "sdxl" if family == "sdxl" else "sd1")
    pipe, dtype = model.pipeline, torch.bfloat16 if device == "cuda" else torch.float32
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    for module in (unet, *model.text_encoders):
        module.to(device)
    side = resolution // 8
    latents = torch.randn(batch, 4, side, side, device=device)
    ids = torch.zeros(batch, 77, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        from training.train import encode_prompts

        with torch.no_grad():
            hidden, pooled = encode_prompts(model, ["sks dog"] * batch, device)
        kwargs = {}
        if family == "sdxl":
            time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch,
                                    device=device, dtype=torch.float32)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        out = unet(latents, torch.full((batch,), 500, device=device), hidden, **kwargs).sample
        out.float().pow(2).mean().backward()
    del ids
    return float(counter.get_total_flops())


def peak_memory_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def atelier_row(args) -> dict:
    import torch

    from training.config import load_config
    from training.train import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config({
        "base_model": str(args.base), "model_family": "sdxl" if args.family == "sdxl" else "sd1",
        "resolution": args.resolution, "enable_bucket": False, "train_batch_size": args.batch,
        "max_train_steps": args.steps, "learning_rate": 1e-4, "rank": 4, "report_to": "none",
        "checkpointing_steps": 10**6, "seed": 0, "gradient_checkpointing": args.grad_ckpt,
        "mixed_precision": "bf16" if args.device == "cuda" else "no", "use_8bit_adam": args.device == "cuda",
        "identifier": "sks", "class_word": "dog"})
    wall = time.perf_counter()
    result = run_training(config, args.kohya, args.work / f"atelier-{args.label}", cache_dir=args.work / "cache",
                          log=lambda line: None)
    metrics = result["metrics"]
    return {"s/step": metrics["seconds_per_step_steady"], "wall_s": time.perf_counter() - wall,
            "peak_gb": peak_memory_gb(args.device), "notes": metrics["notes"]}


def example_row(args) -> dict:
    script = SCRIPTS[args.family]
    # the script runs as it stands (runpy, as `python script`); the wrapper only prints peak GPU memory at exit
    runner = ("import atexit, runpy, sys, torch\n"
              "atexit.register(lambda: torch.cuda.is_available() and print('PEAK_GPU_GB', "
              "torch.cuda.max_memory_allocated() / 2**30, flush=True))\n"
              "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')")
    command = [sys.executable, "-c", runner, str(script), "--pretrained_model_name_or_path", str(args.base),
               "--train_data_dir", str(args.imagefolder), "--caption_column", "text", "--resolution",
               str(args.resolution), "--center_crop", "--train_batch_size", str(args.batch), "--max_train_steps",
               str(args.steps), "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
               "--rank", "4", "--seed", "0", "--output_dir", str(args.work / f"example-{args.label}"),
               "--checkpointing_steps", str(10**6), "--dataloader_num_workers", "0", "--report_to", "tensorboard",
               "--mixed_precision", "bf16" if args.device == "cuda" else "no"]
    if args.grad_ckpt:
        command.append("--gradient_checkpointing")
    if args.device == "cuda":
        command.append("--use_8bit_adam")
    env = dict(os.environ)
    if (THIRD_PARTY / "pylib").exists():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(THIRD_PARTY / "pylib")) if p)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    wall = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *command], capture_output=True, text=True, env=env,
                          check=False)
    wall = time.perf_counter() - wall
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300], "wall_s": wall}
    rates = re.findall(r"(\d+)/(\d+) \[[\d:]+<[^,\]]*, +([\d.]+)(it/s|s/it)", done.stderr)
    last = [r for r in rates if r[0] == r[1]] or rates
    value, unit = float(last[-1][2]), last[-1][3]
    rss = re.search(r"MAXRSS_KB (\d+)", done.stderr)
    row = {"s/step": 1 / value if unit == "it/s" else value, "wall_s": wall}
    if args.device == "cpu" and rss:
        row["peak_gb"] = int(rss[1]) / 2**20
    peak = re.search(r"PEAK_GPU_GB ([\d.]+)", done.stdout + done.stderr)
    if peak:
        row["peak_gb"] = float(peak[1])
    return row


def run_row(args, kind: str, grad_ckpt: bool) -> dict:
    """One row in a fresh process: its own peak memory, nothing cached in this one."""
    label = f"{kind}-{'ckpt' if grad_ckpt else 'nockpt'}"
    command = [sys.executable, __file__, "--row", kind, "--label", label, "--device", args.device, "--family",
               args.family, "--resolution", str(args.resolution), "--batch", str(args.batch), "--steps",
               str(args.steps), "--work", str(args.work), "--base", str(args.base)]
    command += ["--grad-ckpt", "on" if grad_ckpt else "off"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--grad-ckpt", choices=["off", "on", "both"], default="both")
    parser.add_argument("--work", type=Path, default=Path("/tmp/atelier-bench-vs-diffusers"))
    parser.add_argument("--no-example", action="store_true", help="only Atelier's rows")
    parser.add_argument("--row", choices=["atelier", "example"], help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help="a diffusers folder to use instead of building the model")
    args = parser.parse_args()
    if args.row:
        args.grad_ckpt = args.grad_ckpt == "on"
    args.work.mkdir(parents=True, exist_ok=True)
    args.kohya, args.imagefolder = data_folders(args.work)
    if args.row:
        row = atelier_row(args) if args.row == "atelier" else example_row(args)
        print(json.dumps(row, default=str), flush=True)
        return

    args.base = args.base or build_model(args.family, args.work)
    flops = step_flops(args.base, args.family, args.resolution, args.batch, args.device)
    head = {"family": args.family, "device": args.device, "resolution": args.resolution, "batch": args.batch,
            "steps": args.steps, "step_tflop": round(flops / 1e12, 4)}
    print("# " + json.dumps(head), flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.grad_ckpt]
    for grad_ckpt in modes:
        ours = run_row(args, "atelier", grad_ckpt)
        theirs = {"error": "skipped (--no-example)"} if args.no_example else \
            ({"error": f"{SCRIPTS[args.family]} is missing (see this file's docstring)"}
             if not SCRIPTS[args.family].exists() else run_row(args, "example", grad_ckpt))
        for name, row in (("atelier", ours), ("diffusers example", theirs)):
            out = {"run": name, "grad_ckpt": grad_ckpt, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                            for k, v in row.items() if k != "notes"}}
            if "s/step" in row:
                out["images/s"] = round(args.batch / row["s/step"], 3)
                achieved = flops / row["s/step"]
                if args.device == "cuda":
                    out["mfu"] = round(achieved / H200_BF16_DENSE, 4)
                else:
                    out["gflop/s"] = round(achieved / 1e9, 1)
            print(json.dumps(out), flush=True)
        if "s/step" in ours and "s/step" in theirs:
            print(f"# ratio atelier/example s/step (grad_ckpt {'on' if grad_ckpt else 'off'}): "
                  f"{ours['s/step'] / theirs['s/step']:.2f} (goal <= 0.9)", flush=True)


if __name__ == "__main__":
    main()
