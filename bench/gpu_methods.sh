#!/usr/bin/env bash
# GPU check for textual inversion and hypernetworks at full SD 1.5 size, beside LoRA in the same run.
#
#   bench/gpu_methods.sh            # on a machine with CUDA; GPU_STEPS=30 by default
#
# Runs bench/train.py, whose GPU section builds an SD 1.5-sized pipeline with random weights (no
# download) and prints s/step, images/s and peak GPU memory for LoRA b1/b4, textual inversion b4 and
# a hypernetwork (1, 2, 1) b4 at 512 px, bf16, gradient checkpointing, with ratios against LoRA b4.
# (A sibling of bench/gpu.sh; fold its lines in there once that script exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export HF_HUB_OFFLINE=1 MKL_CBWR=AUTO,STRICT
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "# no CUDA device: nothing to measure here (bench/train.py prints the CPU rows)"; exit 0
fi
"$PYTHON" bench/train.py --steps 5 --gpu-steps "${GPU_STEPS:-30}"
