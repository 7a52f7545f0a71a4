"""Every benchmark script runs, tiny, and writes its result files: none can rot unnoticed.

(The fair benchmark and fault injection have their own tests beside this file.)
"""

from __future__ import annotations

import json

import pytest

from benchmarks import buffer_ops, generate_ahead, levers, long_run, memory, overhead, training_cost
from trl_replay_ppo.integrations.compat import trl_ppo


def test_buffer_ops_times_both_samplers(tmp_path):
    text = buffer_ops.main(["--sizes", "64", "256", "--repeats", "3", "--output_dir", str(tmp_path)])
    assert (tmp_path / "buffer_ops.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| 64") or line.startswith("| 256")]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows)


def test_levers_quick_runs_every_arm(tmp_path):
    result = levers.main(["--quick", "--jobs", "0", "--tasks", "digits", "--output_dir", str(tmp_path)])
    summary = result["tasks"]["digits"]["summary"]
    assert set(summary) == set(levers.LEVER_TASKS["digits"][3]) and all(s["runs"] == 1 for s in summary.values())
    assert (tmp_path / "levers.md").is_file() and json.loads((tmp_path / "levers.json").read_text())["tasks"]


def test_lever_rows_read_the_frozen_target_of_their_source_task(tmp_path):
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"protocol": 2, "targets": {"sparse": {"target": 0.7345}}}))
    record = {"points": [{"episode": 0, "eval": 0.1}, {"episode": 32, "eval": 0.6}]}
    assert levers.lever_target("sparse_cost", [record], targets) == (0.7345, "frozen for sparse in targets.json")
    assert levers.lever_target("sparse_g4", [record], targets)[0] == 0.7345
    derived = levers.lever_target("digits_cost", [record], targets)  # start + 0.8 x (final, mean of last 2 - start)
    assert derived == (pytest.approx(0.1 + 0.8 * (0.35 - 0.1)), "from the runs shown")
    assert levers.lever_target("sparse_cost", [record], None)[1] == "from the runs shown"  # the quick mode


def test_levers_writes_the_replayed_row_cost_report_apart(tmp_path):
    options = ["--quick", "--jobs", "0", "--report", "replayed_row_cost", "--tasks", "digits_cost"]
    result = levers.main([*options, "--output_dir", str(tmp_path)])
    assert set(result["tasks"]["digits_cost"]["summary"]) == set(levers.COST_ARMS)
    assert {p.name for p in tmp_path.iterdir()} == {"replayed_row_cost.md", "replayed_row_cost.json"}


def test_training_cost_times_replayed_updates_only(tmp_path):
    result = training_cost.main(
        ["--repeats", "1", "--updates", "5", "--response_length", "4", "--output_dir", str(tmp_path)]
    )
    (repeat,) = result["repeats"]
    counted = {arm: run["updates_counted"] for arm, run in repeat.items()}
    assert counted.pop("on-policy (replay off)") == 4  # all but the first
    assert set(counted.values()) == {1}  # replay runs from the 5th update on
    summary = result["summary"]
    assert summary["on-policy (replay off)"]["training_ratio"] == 1.0
    assert summary["replay defaults"]["training_ratio"] > summary["replay_epochs=1"]["training_ratio"]
    assert "| replay_epochs=1 |" in (tmp_path / "training_cost.md").read_text()


def test_generate_ahead_times_every_arm_on_the_same_cores(tmp_path):
    result = generate_ahead.main(
        ["--repeats", "1", "--updates", "3", "--warmup", "1", "--response_length", "4", "--output_dir", str(tmp_path)]
    )
    (repeat,) = result["repeats"]
    assert {arm: len(seconds) for arm, seconds in repeat.items()} == dict.fromkeys(generate_ahead.ARMS, 3)
    summary = result["summary"]
    assert summary["on-policy"]["ratio"] == 1.0
    assert all(s["training_threads"] + s["generator_threads"] == generate_ahead.CORES for s in summary.values())
    assert summary["replay defaults, generate_ahead"]["generator_threads"] == 1
    assert "| on-policy, generate_ahead | 1 | 1 |" in (tmp_path / "generate_ahead.md").read_text()


def test_long_run_samples_memory_with_a_full_buffer(tmp_path):
    result = long_run.main(
        [
            "--updates",
            "4",
            "--buffer",
            "32",
            "--sample_every",
            "1",
            "--output_dir",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert [s["update"] for s in result["samples"]] == [1, 2, 3, 4]
    assert [s["buffer_size"] for s in result["samples"]][-1] == 32  # 16 fresh per update, capacity 32
    assert {p.name for p in tmp_path.glob("long_run.*")} == {"long_run.json", "long_run.md", "long_run.png"}


def test_memory_measures_a_one_layer_update(tmp_path):
    tiny = ["--layers", "1", "--batch", "1", "--prompt_tokens", "4", "--response_tokens", "2"]
    (row,) = memory.main(["--modes", "lora_bf16_shared_head", *tiny, "--output_dir", str(tmp_path)])
    assert row["measured"]["layers"] == 1 and row["measured"]["trainable_params"] > 0
    assert "fits 16 GB" in (tmp_path / "memory.md").read_text()


@pytest.mark.skipif(trl_ppo() is None, reason="stock TRL PPO exists only on TRL <= 1.12: the TRL 1.12 job runs it")
@pytest.mark.trl112
def test_overhead_pairs_stock_and_ours(tmp_path):
    result = overhead.main(["--pairs", "1", "--updates", "3", "--output_dir", str(tmp_path)])
    assert len(result["ratios"]) == 1 and result["ratios"][0] > 0
    assert (tmp_path / "overhead.md").is_file()
