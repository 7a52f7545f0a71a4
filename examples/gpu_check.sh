#!/usr/bin/env bash
# The GPU paths CPU-only CI does not run, each in a few minutes on one GPU:
#   1. a Qwen3-0.6B-shaped policy with LoRA in bf16 (shared value head, and LoRA value model): CUDA peak memory
#      of one update at 4 episodes x (192 prompt + 256 response) tokens, against 16 GB;
#   2. bf16 training on the GPU (the digits task learns, weights stay finite);
#   3. DeepSpeed ZeRO-2 and ZeRO-3 on one process (when deepspeed is installed).
# Usage: bash examples/gpu_check.sh  (from the repository root, in the environment `make install` built).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
status=0
$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print(torch.cuda.get_device_name(0))" || exit 1
$PY benchmarks/memory.py --modes lora_bf16_shared_head lora_bf16_lora_value --batch 4 --prompt_tokens 192 \
    --response_tokens 256 || status=1
$PY examples/gpu_check.py bf16 || status=1
if $PY -c "import deepspeed" 2>/dev/null; then
    for stage in 2 3; do
        "$(dirname "$PY")/accelerate" launch --config_file "trl_replay_ppo/cli/examples/accelerate/deepspeed_zero$stage.yaml" \
            --num_processes 1 examples/gpu_check.py zero || status=1
    done
else
    echo "deepspeed is not installed: ZeRO-2/3 not checked (pip install deepspeed)"
fi
exit $status
