"""The SmolLM2 benchmark's report on hand-made records: target, reach counts, the not-measurable rule, files.

(The benchmark itself runs, tiny, in the SmolLM2 job: tests/tasks/test_smollm2.py.)"""

from __future__ import annotations

import math

from benchmarks import smollm2


def record(arm: str, seed: int, accuracies: list[float], learning_rate: float = 1e-4) -> dict:
    """A run evaluated every 40 episodes (5 updates, 10 s of training each)."""
    points = [
        {"episode": 40 * i, "train_seconds": 10.0 * i, "accuracy": a, "format": 0.5} for i, a in enumerate(accuracies)
    ]
    evaluations = len(accuracies) - 1
    return {
        "arm": arm,
        "seed": seed,
        "settings": {"learning_rate": learning_rate},
        "points": points,
        "updates": 5 * evaluations,
        "train_seconds": 10.0 * evaluations,
        "sampling_seconds": 2.0 * evaluations,
    }


def test_the_target_comes_from_replay_off_and_the_ratio_needs_two_seeds(tmp_path):
    records = [
        record("replay_default", 1, [0.2, 0.65, 0.62]),
        record("replay_default", 2, [0.2, 0.3, 0.62]),
        record("replay_off", 1, [0.2, 0.3, 0.7]),
        record("replay_off", 2, [0.2, 0.4, 0.5]),
    ]
    summary = smollm2.summarise(records)
    assert math.isclose(summary["target"], 0.2 + 0.8 * 0.5)  # start + 0.8 of the way to replay off's best final
    assert summary["arms"]["replay_default"]["episodes_to_target"] == [40, 80]
    assert summary["arms"]["replay_off"]["episodes_to_target"] == [80, math.inf]
    assert summary["ratio"] is None  # replay off reached on 1 of 2 seeds: not measurable
    records[3] = record("replay_off", 2, [0.2, 0.4, 0.65])
    summary = smollm2.summarise(records)
    assert math.isclose(summary["ratio"], 80 / 60)  # medians 80 and (40 + 80) / 2
    smollm2.write_report(records, summary, tmp_path, "python -m benchmarks.smollm2")
    text = (tmp_path / "smollm2.md").read_text()
    assert "| replay_default | 60 (40, 80) | 2/2 |" in text and "1.33x" in text
    assert {p.name for p in tmp_path.iterdir()} == {"smollm2.md", "smollm2.json", "smollm2.png"}


def test_no_target_when_replay_off_never_beats_the_start(tmp_path):
    records = [record("replay_default", 1, [0.2, 0.3]), record("replay_off", 1, [0.2, 0.1])]
    summary = smollm2.summarise(records)
    assert math.isnan(summary["target"]) and summary["ratio"] is None
    assert all(arm["reached"] == 0 for arm in summary["arms"].values())
    smollm2.write_report(records, summary, tmp_path, "python -m benchmarks.smollm2 --quick")
    assert "no target: replay off never scored above the start" in (tmp_path / "smollm2.md").read_text()


def test_another_learning_rate_reports_under_its_own_name(tmp_path):
    records = [record("replay_default", 1, [0.2, 0.3], 3e-5), record("replay_off", 1, [0.2, 0.25], 3e-5)]
    summary = smollm2.summarise(records)
    smollm2.write_report(
        records, summary, tmp_path, "python -m benchmarks.smollm2 --learning_rate 3e-05", "smollm2_lr3e-05"
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "smollm2_lr3e-05.md",
        "smollm2_lr3e-05.json",
        "smollm2_lr3e-05.png",
    }
    assert "learning rate 3e-05" in (tmp_path / "smollm2_lr3e-05.md").read_text()
