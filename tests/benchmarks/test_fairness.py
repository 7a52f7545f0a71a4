"""The fair benchmark's smoke path: every arm the installed TRL offers runs, and the result files are written."""

from __future__ import annotations

import json

from benchmarks.fairness import main, stock_available
from trl_replay_ppo import ReplayPPOConfig


def test_quick_benchmark_runs_every_arm(tmp_path):
    result = main(
        ["--quick", "--tasks", "sparse", "--sections", "tasks", "--jobs", "0", "--output_dir", str(tmp_path)]
    )
    assert {p.name for p in tmp_path.iterdir()} == {"fairness.json", "fairness.md", "fairness.png"}
    summary = json.loads((tmp_path / "fairness.json").read_text())["tasks"]["sparse"]["summary"]
    expected = {"replay_off", "compute_matched", "tuned_ppo", "tuned_grpo", "replay_default", "tuned_replay"}
    if stock_available() is None:
        expected.add("stock_trl")
    assert set(summary) == expected
    for arm, figures in summary.items():
        assert figures["runs"] == 1 and not figures["stopped"], (arm, figures["stopped"])
        assert figures["steps_per_episode"] > 0, arm
        if figures["kind"] in ("ours", "grpo"):  # stock TRL does not count its trained tokens
            assert figures["tokens_per_episode"] > 0, arm
    # The compute-matched arm trains the rows of replay's defaults: the fresh batch and `replay_ratio` times as many.
    assert (
        summary["compute_matched"]["settings"]["num_ppo_epochs"]
        == (1 + ReplayPPOConfig.replay_ratio) * summary["replay_off"]["settings"]["num_ppo_epochs"]
    )
    on_policy_rates = {summary[arm]["settings"]["learning_rate"] for arm in ("tuned_ppo", "tuned_grpo")}
    assert summary["replay_default"]["settings"]["learning_rate"] in on_policy_rates
    replay_fields = {"replay_ratio", "replay_sample_size", "self_imitation_coef", "use_priority_sampling"}
    assert not replay_fields & set(summary["replay_default"]["settings"])  # every replay field at its default
    assert summary["tuned_grpo"]["kind"] == "grpo"
    assert "| sparse |" in (tmp_path / "fairness.md").read_text()
    assert result["tasks"]["sparse"]["headline"]["best_replay"] in ("replay_default", "tuned_replay")
