"""The offline demo (what `make demo` runs) learns, and writes its plot."""

from __future__ import annotations

from trl_replay_ppo.cli.demo import run_demo


def test_demo_improves_the_eval_reward(tmp_path):
    result = run_demo(tmp_path / "demo", total_episodes=1600, disable_tqdm=True)
    assert result["eval_reward_after"] > result["eval_reward_before"] + 0.2, result
    assert result["plot"].is_file() and result["plot"].stat().st_size > 10_000
    assert (tmp_path / "demo" / "policy" / "model.safetensors").is_file()
