"""metrics.jsonl, train.log, report_to backends (offline), plots, and bad production settings."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.cli.main import main as cli_main
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

PRODUCTION = {
    "total_episodes": 32,
    "eval_strategy": "steps",
    "eval_steps": 4,
    "per_device_eval_batch_size": 4,
    "use_replay_buffer": True,
    "replay_buffer_size": 32,
    "min_replay_size": 8,
    "replay_sample_size": 4,
}


def _run(tiny, tmp_path, **overrides):
    args = tiny_config(tmp_path, **{**PRODUCTION, **overrides})
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(16),
        reward_model=None,
        reward_funcs=digits_reward,
        eval_dataset=make_digits_dataset(4, seed=5),
    )
    trainer.train()
    return trainer


def test_metrics_jsonl_train_log_and_plots(tmp_path, tiny, capsys):
    trainer = _run(tiny, tmp_path)
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["step"] for r in evals] == [4, 8]
    for record, logged in zip(train, [h for h in trainer.state.log_history if "episode" in h], strict=True):
        assert {k for k in logged if k not in ("step", "epoch")} <= record.keys()
        assert {"step", "episode", "time", "elapsed"} <= record.keys()
    assert {"eval_reward", "eval_kl", "eval_rewards/digits_reward"} <= evals[0].keys()
    assert {"buffer/size", "replay/is_weight_mean", "efficiency/sample_efficiency"} <= train[-1].keys()
    log = (out / "train.log").read_text()
    assert '"replay_sample_size": 4' in log and "step 8 | " in log and "eval_reward=" in log

    assert cli_main(["plot", str(out)]) == 0
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"reward.png", "kl.png", "buffer.png", "efficiency.png"}
    assert all(p.stat().st_size > 10_000 for p in pngs)
    assert "reward.png" in capsys.readouterr().out


def test_plot_overlays_several_runs(tmp_path, tiny_dirs, monkeypatch):
    from matplotlib.axes import Axes

    from trl_replay_ppo.cli.plots import plot_runs
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    for name in ("a", "b"):
        _run(load_tiny_models(tiny_dirs), tmp_path / name, use_replay_buffer=name == "b")
    labels = []
    monkeypatch.setattr(Axes, "set_ylabel", lambda ax, label, **kwargs: labels.append((ax.get_title(), label)))
    paths = plot_runs([tmp_path / "a" / "out", tmp_path / "b" / "out"], tmp_path / "plots")
    assert (tmp_path / "plots" / "reward.png") in paths
    assert ("eval reward (eval_reward)", "mean score per eval prompt") in labels
    assert ("episodes in the replay buffer (buffer/size)", "episodes") in labels
    assert all(title and unit for title, unit in labels)  # every panel: a readable title and its unit


def test_wandb_offline_and_tensorboard(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(tiny, tmp_path, report_to=["wandb", "tensorboard"])
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "no offline wandb run directory"
    record = next(runs[0].glob("run-*.wandb")).read_bytes()  # the offline run's transaction log
    for metric in (b"objective/scores", b"buffer/size", b"eval_reward", b"rewards/digits_reward"):
        assert metric in record, metric
    events = list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/update/ppo_epochs" in tags and "train/objective/scores" in tags
    assert not [tag for tag in tags if tag.startswith("train/train/")]  # each tag prefixed once


def test_resume_path_must_be_a_checkpoint(tmp_path, tiny):
    trainer = make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nope"))
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "not-a-checkpoint"))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_eval_strategy_needs_an_eval_dataset(tmp_path, tiny):
    with pytest.raises(ValueError, match="need an `eval_dataset`"):
        make_trainer(tiny, tiny_config(tmp_path, eval_strategy="steps", eval_steps=2), make_digits_dataset(8))


def test_metric_for_best_model_must_be_produced(tmp_path, tiny):
    args = tiny_config(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        metric_for_best_model="eval_accuracy",
        per_device_eval_batch_size=4,
    )
    with pytest.raises(ValueError, match="'eval_accuracy'` is not a metric `evaluate\\(\\)` produces"):
        make_trainer(tiny, args, make_digits_dataset(8), eval_dataset=make_digits_dataset(4))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"save_steps": 3, "eval_steps": 2}, "saving steps to be a round multiple of the evaluation steps"),
        ({"save_strategy": "no"}, "save and eval strategy to match"),
    ],
)
def test_load_best_model_needs_matching_steps(tmp_path, overrides, match):
    settings = {"eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2}
    with pytest.raises(ValueError, match=match):
        ReplayPPOConfig(output_dir=str(tmp_path), load_best_model_at_end=True, **{**settings, **overrides})


def test_early_stopping_needs_evaluations(tmp_path):
    with pytest.raises(ValueError, match="`early_stopping_patience` needs evaluations"):
        ReplayPPOConfig(output_dir=str(tmp_path), early_stopping_patience=2)


def test_fresh_run_keeps_an_earlier_metrics_file(tmp_path, tiny_dirs):
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    _run(load_tiny_models(tiny_dirs), tmp_path)
    first = (tmp_path / "out" / "metrics.jsonl").read_text()
    _run(load_tiny_models(tiny_dirs), tmp_path)
    kept = [p for p in (tmp_path / "out").glob("metrics.*.jsonl")]
    assert len(kept) == 1 and kept[0].read_text() == first
    assert os.path.getsize(tmp_path / "out" / "metrics.jsonl") > 0


def test_no_global_side_effects(tmp_path, tiny):
    import logging
    import subprocess
    import sys
    import warnings

    environment = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, json; e = dict(os.environ); import trl_replay_ppo; print(e == dict(os.environ))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert environment.stdout.strip().endswith("True")  # importing the package changes no environment variable
    showwarning, filters = warnings.showwarning, list(warnings.filters)
    logged = ("trl_replay_ppo", "transformers", "trl", "accelerate")
    loggers = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in logged}
    trainer = make_trainer(tiny, tiny_config(tmp_path, total_episodes=8), make_digits_dataset(8))

    def warn_during_training(*args, **kwargs):
        warnings.warn("a warning raised while training", UserWarning, stacklevel=1)
        return rollout(*args, **kwargs)

    rollout, trainer.rollout = trainer.rollout, warn_during_training
    trainer.train()
    assert warnings.showwarning is showwarning and warnings.filters == filters
    assert {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in logged} == loggers
    assert "a warning raised while training" in (tmp_path / "out" / "train.log").read_text()
