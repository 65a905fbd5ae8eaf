#!/usr/bin/env bash
# Issue #12's GPU benchmark: Atelier's LoRA trainer beside diffusers' own example script, on an H200.
#
#   bench/gpu.sh          # CUDA machine: the rows below, in under 8 minutes on an H200
#   bench/gpu.sh --cpu    # no GPU: the same side-by-side at SD 1.5's full topology, 64 px, batch 1, on the CPU
#
# Random-weight models at the real architecture (tests/tiny_models/full_size.py, no download), bf16,
# 8-bit Adam (bitsandbytes), LoRA rank 4, gradient checkpointing off and on:
#   SD 1.5 LoRA at 512 px batch 4, SDXL LoRA at 1024 px batch 2
# Each row: s/step, images/s, peak memory, MFU (one step's FLOPs from torch.utils.flop_counter.FlopCounterMode
# over the H200's 989 TFLOPS dense bf16), and the ratio against diffusers' train_text_to_image_lora.py /
# train_text_to_image_lora_sdxl.py (v0.40.0) run in the same script on the same model and images.
# Goals: Atelier's s/step <= 0.9x the example's; MFU >= 35% for SDXL at 1024 px.
#
# The example scripts live in bench/third_party/diffusers/ (ignored by git, never committed); a device
# machine has no network, so carry bench/third_party with the run. To fill it on a machine with the repo:
#   git -C DIFFUSERS show v0.40.0:examples/text_to_image/train_text_to_image_lora.py > bench/third_party/diffusers/train_text_to_image_lora.py
#   git -C DIFFUSERS show v0.40.0:examples/text_to_image/train_text_to_image_lora_sdxl.py > bench/third_party/diffusers/train_text_to_image_lora_sdxl.py
#   pip install --target bench/third_party/pylib --no-deps datasets dill multiprocess pandas pyarrow xxhash
# Details of each figure: bench/train_vs_diffusers.py's docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export HF_HUB_OFFLINE=1 MKL_CBWR=AUTO,STRICT TOKENIZERS_PARALLELISM=false
WORK=${WORK:-/tmp/atelier-bench-gpu}
if [ "${1:-}" = "--cpu" ]; then
  echo "# CPU side-by-side (no GPU): SD 1.5 full topology, 64 px, batch 1, fp32, AdamW, ${CPU_STEPS:-6} steps"
  exec "$PYTHON" bench/train_vs_diffusers.py --device cpu --family sd15 --resolution 64 --batch 1 \
    --steps "${CPU_STEPS:-6}" --work "$WORK-cpu" ${THREADS:+--threads "$THREADS"}
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "# no CUDA device here: run bench/gpu.sh --cpu for the CPU side-by-side"; exit 0
fi
"$PYTHON" -c "import torch; print('#', torch.cuda.get_device_name(), torch.__version__)"
start=$(date +%s)
"$PYTHON" bench/train_vs_diffusers.py --device cuda --family sd15 --resolution 512 --batch 4 \
  --steps "${SD15_STEPS:-30}" --work "$WORK"
"$PYTHON" bench/train_vs_diffusers.py --device cuda --family sdxl --resolution 1024 --batch 2 \
  --steps "${SDXL_STEPS:-20}" --work "$WORK"
echo "# total $(( $(date +%s) - start )) s"
