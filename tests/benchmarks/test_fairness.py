"""The fair benchmark's machinery on its quick mode: every arm the environments offer runs, targets are frozen
once and then read, a ratio counts only where both arms reach the target, and a run can use another interpreter."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks import fairness_report as report
from benchmarks.fairness import MIN_REACHED, arm_spec, main
from benchmarks.fairness_runner import ENVIRONMENTS, missing_environment, run_all
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.integrations.compat import trl_ppo

AHEAD_SETTINGS = {"generate_ahead": True, "generate_ahead_threads": 1}
QUICK = ["--quick", "--jobs", "0", "--tasks", "sparse", "held_out"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("fairness")
    return output, main([*QUICK, "--sections", "tasks", "lr", "noise", "--output_dir", str(output)])


def test_quick_benchmark_runs_every_arm(quick_run):
    output, result = quick_run
    assert {"fairness.json", "fairness.md", "fairness.png", "fairness_targets.json"} <= {
        p.name for p in output.iterdir()
    }
    summary = result["tasks"]["sparse"]["summary"]
    expected = {"replay_off", "compute_matched", "tuned_ppo", "tuned_grpo", "replay_default", "tuned_replay"}
    if trl_ppo() is not None:
        expected.add("stock_trl")
    assert set(summary) == expected
    for arm, figures in summary.items():
        assert figures["runs"] == 1 and not figures["stopped"], (arm, figures["stopped"])
        assert figures["steps_per_episode"] > 0, arm
    compute_matched, replay_off = summary["compute_matched"]["settings"], summary["replay_off"]["settings"]
    assert compute_matched["num_ppo_epochs"] == (1 + ReplayPPOConfig.replay_ratio) * replay_off["num_ppo_epochs"]
    on_policy_rates = {summary[arm]["settings"]["learning_rate"] for arm in ("tuned_ppo", "tuned_grpo")}
    assert summary["replay_default"]["settings"]["learning_rate"] in on_policy_rates
    assert summary["tuned_grpo"]["kind"] == "grpo" and "num_generations" in summary["tuned_grpo"]["settings"]
    held_out = result["tasks"]["held_out"]
    assert held_out["selection"]["start_accuracy"] <= 0.1  # a start like the sparse task's
    assert set(held_out["selection"]["on_policy_reached"]) <= set(report.ON_POLICY)
    lr_rows = result["lr"]["sparse"]["rows"]
    assert set(lr_rows) == {"tuned_ppo", "tuned_grpo", "tuned_replay", "replay_default", "replay_adaptive"}
    adaptive = lr_rows["replay_adaptive"]["per_start"][10]["settings"]
    assert adaptive["adaptive_lr_kl"] == result["lr"]["sparse"]["adaptive_lr_kl"]
    assert adaptive["learning_rate"] == pytest.approx(10 * result["lr"]["sparse"]["base_learning_rate"])
    noise = result["noise"]["held_out"]
    assert len(noise["per_seed"]) == len(noise["seeds"]) == 3 and 0 not in noise["seeds"]  # never the tuning seed
    assert [d["seeds"] for d in noise["spread"]] == [3, 9, 15]
    adaptive_starts = noise["adaptive"]["per_start"].values()
    assert len(adaptive_starts) == 4 and {s["runs"] for s in adaptive_starts} == {3}
    text = (output / "fairness.md").read_text()
    assert "| sparse |" in text and "Learning-rate starts" in text and "Cost per section" in text
    assert "Seed noise" in text


def test_targets_are_frozen_once_and_then_read(quick_run, monkeypatch):
    output, _ = quick_run
    frozen = json.loads((output / "fairness_targets.json").read_text())
    assert frozen["protocol"] == 2 and set(frozen["targets"]) == {"sparse", "held_out"}
    assert frozen["targets"]["held_out"]["from"] == "its on-policy arms, seed 0"

    def moved(*args, **kwargs):
        raise AssertionError("a frozen target was computed again")

    monkeypatch.setattr(report, "target_of", moved)
    again = main([*QUICK, "--sections", "tasks", "--output_dir", str(output)])
    assert again["tasks"]["sparse"]["target"] == frozen["targets"]["sparse"]["target"]
    assert json.loads((output / "fairness_targets.json").read_text()) == frozen


def _summary(reached: int, episodes: float) -> dict:
    return {"reached": reached, "runs": 3, "episodes_to_target": episodes}


def test_a_ratio_counts_only_where_both_arms_reach_the_target_on_two_seeds():
    head = report.headline({"tuned_ppo": _summary(1, 6000), "tuned_replay": _summary(3, 1000)}, 320, MIN_REACHED)
    assert not head["measurable"] and head["ratio"] is None
    assert head["reach"] == {"tuned_ppo": "1/3", "tuned_replay": "3/3"}
    assert report.format_ratio(head["ratio"]) == "not measurable"
    head = report.headline({"tuned_ppo": _summary(2, 4800), "tuned_replay": _summary(2, 1600)}, 320, MIN_REACHED)
    assert head["measurable"] and head["ratio"] == 3.0
    assert head["ratio_one_eval_later"] == pytest.approx(4800 / 1920)  # the ratio's resolution


def test_learning_rate_spread_is_worst_over_best_start():
    per_start = {1 / 3: _summary(3, 3200), 1: _summary(3, 1600), 3: _summary(2, 800), 10: _summary(1, 640)}
    spread = report.spread(per_start, MIN_REACHED)
    assert spread["best_start"] == 3 and spread["worst_start"] == 10 and math.isinf(spread["ratio"])
    assert spread["starts_reached"] == 3


def test_best_of_chooses_by_episodes_or_by_wall_seconds_to_target():
    def record(episodes: list[int], seconds: list[float], scores: list[float]) -> dict:
        return {
            "points": [{"episode": e, "time": t, "eval": s} for e, t, s in zip(episodes, seconds, scores, strict=True)]
        }

    few_episodes = record([0, 320, 640], [0.0, 50.0, 100.0], [0.1, 0.9, 0.9])
    few_seconds = record([0, 320, 640, 960], [0.0, 10.0, 20.0, 30.0], [0.1, 0.1, 0.9, 0.9])
    assert report.best_of([few_seconds, few_episodes], 0.5) is few_episodes
    assert report.best_of([few_episodes, few_seconds], 0.5, by="seconds") is few_seconds


def test_identical_starts_spread_only_by_the_seeds_they_draw():
    alike = report.identical_start_spread([1280.0] * 5, starts=4, seeds=3, goal=1.25)
    assert alike == {"seeds": 3, "median_spread": 1.0, "within_goal": 1.0}
    # one seed a start from {1000, 2000}: all 4 starts alike with probability 2 / 2**4, else a spread of 2
    two = report.identical_start_spread([1000.0, 2000.0], starts=4, seeds=1, goal=1.25, draws=40_000)
    assert two["median_spread"] == 2.0 and two["within_goal"] == pytest.approx(1 / 8, abs=0.01)
    # a start that does not reach the target makes the spread inf, and so do starts that all miss it
    missing = report.identical_start_spread([1000.0, math.inf], starts=4, seeds=1, goal=1.25, draws=40_000)
    assert math.isinf(missing["median_spread"]) and missing["within_goal"] == pytest.approx(1 / 16, abs=0.01)


def test_a_target_counts_as_reached_only_after_training_began():
    # a run that gets worse from a start above the target reaches it at its first trained evaluation, not at 0
    record = {"points": [{"episode": e, "time": e / 10, "eval": s} for e, s in ((0, 0.6), (32, 0.5), (64, 0.4))]}
    assert report.reach(record, 0.5) == (32, 3.2)
    assert math.isinf(report.reach(record, 0.7)[0])


def test_records_outlive_docstring_and_comment_edits_but_not_code_edits(tmp_path):
    from benchmarks.fairness_runner import code_of

    versions = {
        "original": 'def f(x):\n    """Doubles."""\n    return 2 * x\n',
        "documented": '"""A module."""\n\n\ndef f(x):  # a comment\n    """Twice x."""\n    return 2*x\n',
        "changed": 'def f(x):\n    """Doubles."""\n    return 3 * x\n',
    }
    codes = {}
    for name, text in versions.items():
        (tmp_path / f"{name}.py").write_text(text)
        codes[name] = code_of(tmp_path / f"{name}.py")
    assert codes["original"] == codes["documented"] != codes["changed"]


def test_a_run_runs_in_the_interpreter_of_its_family(tmp_path):
    environments = {**ENVIRONMENTS, "ours": Path(sys.executable)}
    spec = arm_spec("sparse", "ppo", {}, seed=0, quick=True)
    (record,) = run_all([spec], tmp_path / "records", jobs=1, environments=environments)
    assert not record["stopped"] and record["environment"]["python"] == sys.executable
    assert len(list((tmp_path / "records").glob("*.json"))) == 1  # kept, keyed by spec, code and versions
    assert "no interpreter at" in missing_environment("grpo", {**ENVIRONMENTS, "grpo": tmp_path / "none"})
    if trl_ppo() is None:
        assert "has no PPOTrainer" in missing_environment("stock", {**ENVIRONMENTS, "stock": Path(sys.executable)})


def test_a_run_with_stop_at_ends_at_the_first_evaluation_that_reaches_it():
    from benchmarks.runs import run

    spec = arm_spec("sparse", "replay", {}, seed=0, quick=True)  # 64 episodes, evaluated every 32
    record = run({**spec, "stop_at": -1.0})  # reached at the first trained evaluation
    assert not record["stopped"] and record["generated"] == 32
    assert [p["episode"] for p in record["points"]] == [0, 32]


def test_quick_long_profile_runs_each_family_also_with_generate_ahead(tmp_path):
    result = main(["--quick", "--jobs", "0", "--sections", "long", "--output_dir", str(tmp_path)])
    long = result["long"]
    assert set(long["summary"]) == {"ppo", "replay", "ppo_ahead", "replay_ahead"}
    for family in ("ppo", "replay"):
        assert long["chosen"][f"{family}_ahead"] == {**long["chosen"][family], **AHEAD_SETTINGS}
        assert long["summary"][f"{family}_ahead"]["settings"]["generate_ahead"] is True
    assert "fastest replay arm / fastest on-policy arm" in (tmp_path / "fairness.md").read_text()
