"""The vLLM benchmark's quick mode: both backends train the same model in the vLLM environment and the table is
written."""

from __future__ import annotations

import sys

import pytest

from benchmarks.vllm_generation import main

pytestmark = pytest.mark.vllm  # CI's vLLM job (`make test-vllm`): each run starts its engine in a child process


def test_quick_comparison_runs_both_backends(tmp_path):
    result = main(["--quick", "--python", sys.executable, "--output_dir", str(tmp_path)])
    assert result["stopped"] == []
    assert set(result["summary"]) == {"generate", "vllm"}
    assert all(figures["seconds"] > 0 and figures["sampling_seconds"] > 0 for figures in result["per_update"].values())
    assert "| vllm |" in (tmp_path / "vllm_generation.md").read_text()
