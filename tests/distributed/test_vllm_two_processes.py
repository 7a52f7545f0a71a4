"""Two processes through `accelerate launch` (gloo), each with its own colocated vLLM engine: both train, their
`vllm/*` metrics are reduced over the ranks, and their weights stay equal."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from safetensors.torch import load_file

from tests.helpers import ROOT, two_process_command

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`)


def test_two_ranks_each_with_an_engine_train_alike(tmp_path):
    command = two_process_command(29533, "tests.distributed.vllm_child", str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Files, not stdout: the two ranks' output interleaves (progress bars end lines of their own).
    metrics = [json.loads((tmp_path / f"metrics_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert metrics[0] == metrics[1] and set(metrics[0]) >= {"vllm/is_weight_mean"}  # reduced over both ranks
    first, second = (load_file(tmp_path / f"weights_rank{rank}.safetensors") for rank in (0, 1))
    assert all(first[name].equal(second[name]) for name in first)
