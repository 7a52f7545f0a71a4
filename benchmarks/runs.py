"""One benchmark run: a trainer (this package's, stock TRL PPO, or TRL's GRPOTrainer) on one task and seed.

`run(spec)` trains for a budget of generated episodes and returns a record: the learning curve
(held-out evaluation score, its exact-answer accuracy, and training-rollout score against generated
episodes and wall time),
optimizer steps and trained tokens, peak memory, and how the run ended. Every arm is evaluated by
the same `Evaluator` (greedy completions of the held-out prompts, scored by the task's reward),
whose cost is counted in the wall time.

A spec is plain JSON: ``{"task", "kind" ("ours" | "stock" | "grpo"), "settings", "seed",
"budget", "eval_every"}`` and optionally ``"threads"`` (torch threads, default 1), ``"models"``
(`model_dirs`' kind, default the task's) and ``"stop_at"`` (a target score: stop once it is reached); ``settings`` are
the config fields of the arm. ``python -m benchmarks.runs SPEC.json RECORD.json`` runs one in the
interpreter that runs it (how the benchmark runs each family in its own virtual environment).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.state import AcceleratorState
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from trl_replay_ppo.tasks.arithmetic import HELD_OUT, SPARSE, ArithmeticRewardModel, arithmetic_reward
from trl_replay_ppo.tasks.digits import DigitsRewardModel, digits_reward, make_digits_dataset

MODELS = Path("/tmp/trl_replay_ppo_benchmark/models")


@dataclass(frozen=True)
class TaskData:
    train: Dataset
    eval: Dataset
    reward: Any
    reward_model: type
    models: str  # "tiny" (random policy) or "arithmetic" (the arithmetic base model)


def task_data(task: str) -> TaskData:
    """Prompts, reward function, reward-model class and base models of a benchmark task."""
    if task == "digits":
        return TaskData(
            make_digits_dataset(2000, seed=0),
            make_digits_dataset(128, seed=1),
            digits_reward,
            DigitsRewardModel,
            "tiny",
        )
    arithmetic = HELD_OUT if task.startswith("held_out") else SPARSE
    return TaskData(
        arithmetic.dataset("train"), arithmetic.dataset("eval"), arithmetic_reward, ArithmeticRewardModel, "arithmetic"
    )


def model_dirs(kind: str) -> dict[str, Path]:
    """Build (once per machine) and return the directories of the ``tiny``, ``vllm_tiny`` (32-dim attention heads,
    as vLLM's CPU attention needs) or ``arithmetic`` models."""
    from trl_replay_ppo.tasks.arithmetic import build_arithmetic_models
    from trl_replay_ppo.tasks.tiny import build_tiny_models, build_vllm_tiny_models

    root = MODELS / f"{kind}-{_tasks_code_hash()}"  # a change to how models are built builds them anew
    dirs = {name: root / name for name in ("tokenizer", "policy", "reward")}
    if not (root / "complete").exists():
        builders = {
            "tiny": build_tiny_models,
            "vllm_tiny": build_vllm_tiny_models,
            "arithmetic": build_arithmetic_models,
        }
        builders[kind](root)
        (root / "complete").touch()
    return dirs


def _tasks_code_hash() -> str:
    import hashlib

    import trl_replay_ppo.tasks

    digest = hashlib.sha256()
    for path in sorted(Path(trl_replay_ppo.tasks.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class CountingReward:
    """Wraps a reward function and counts the completions it scored (= generated episodes) and their tokens."""

    def __init__(self, func, tokenizer):
        self.func, self.tokenizer, self.__name__ = func, tokenizer, func.__name__
        self.calls = self.tokens = 0

    def __call__(self, prompts, completions, **kwargs):
        self.calls += len(completions)
        self.tokens += sum(len(self.tokenizer(c)["input_ids"]) + 1 for c in completions)  # + the stop token
        return self.func(prompts, completions, **kwargs)


class Evaluator:
    """Greedy completions of the held-out prompts, scored by the task's reward: the same for every arm."""

    def __init__(self, data: TaskData, tokenizer, max_new_tokens: int):
        self.data, self.tokenizer, self.max_new_tokens = data, tokenizer, max_new_tokens
        self.encoded = tokenizer(list(data.eval["prompt"]), return_tensors="pt", padding=True)
        self.columns = {k: list(data.eval[k]) for k in data.eval.column_names if k != "prompt"}

    @torch.no_grad()
    def __call__(self, policy: torch.nn.Module) -> tuple[float, float]:
        """``(mean reward, fraction of completions scored 1)`` of greedy completions of the eval prompts."""
        was_training = policy.training
        policy.eval()
        pad = self.tokenizer.pad_token_id
        output = policy.generate(
            **self.encoded,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            suppress_tokens=[pad],
        )
        policy.train(was_training)
        completions = self.tokenizer.batch_decode(
            output[:, self.encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        rewards = self.data.reward(list(self.data.eval["prompt"]), completions, **self.columns)
        return float(sum(rewards) / len(rewards)), float(sum(r == 1.0 for r in rewards) / len(rewards))


class Curve(TrainerCallback):
    """Evaluates every ``eval_every`` generated episodes and records the learning curve; with ``stop_at``, stops
    training at the first trained evaluation whose mean with the one before reaches it (the benchmark's reach rule,
    `fairness_report.reach`), for sections that need only the episodes to target."""

    def __init__(
        self, evaluate, episodes, policy, eval_every: int, train_score_key: str, stop_at: float | None = None
    ):
        self.evaluate, self.episodes, self.policy, self.eval_every = evaluate, episodes, policy, eval_every
        self.train_score_key, self.stop_at = train_score_key, stop_at
        self.points: list[dict] = []
        self.train_scores: list[float] = []
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.next_eval = 0
        self.max_empty_fraction = 0.0
        self.skipped_steps = 0

    def record(self, force: bool = False) -> None:
        generated = self.episodes()
        if generated < self.next_eval and not force:
            return
        started = time.perf_counter()
        score, accuracy = self.evaluate(self.policy())
        self.eval_seconds += time.perf_counter() - started
        recent = self.train_scores[-5:]
        self.points.append(
            {
                "episode": generated,
                "eval": score,
                "accuracy": accuracy,
                "train": float(sum(recent) / len(recent)) if recent else math.nan,
                "time": time.perf_counter() - self.start,
            }
        )
        self.next_eval = generated + self.eval_every

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if self.train_score_key in logs:
            self.train_scores.append(float(logs[self.train_score_key]))
        self.max_empty_fraction = max(self.max_empty_fraction, logs.get("rollout/empty_fraction", 0.0))
        self.skipped_steps = logs.get("update/skipped_steps", self.skipped_steps)

    def reached(self) -> bool:
        if self.stop_at is None or len(self.points) < 2 or self.points[-1]["episode"] == 0:
            return False
        return (self.points[-1]["eval"] + self.points[-2]["eval"]) / 2 >= self.stop_at

    def on_step_end(self, args, state, control, **kwargs):
        self.record()
        if self.reached():
            control.should_training_stop = True


class StepCounter:
    """Counts optimizer steps by wrapping ``optimizer.step``."""

    def __init__(self, optimizer):
        self.steps = 0
        step = optimizer.step

        def counting_step(*args, **kwargs):
            self.steps += 1
            return step(*args, **kwargs)

        optimizer.step = counting_step


def run(spec: dict) -> dict:
    """Train one arm as ``spec`` says; never raises (a failure is recorded with its reason)."""
    import datasets
    import transformers

    torch.set_num_threads(spec.get("threads", 1))
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    start = time.perf_counter()
    record = {"spec": spec, "points": [], "stopped": None}
    AcceleratorState._reset_state(reset_partial_state=True)  # several runs may share a process
    collect = gc.collect
    extra: dict = {}
    try:
        record.update(_train(spec, extra))
    except Exception as error:  # a run that stops early is a result, not a crash of the benchmark
        record["stopped"] = f"{type(error).__name__}: {str(error)[:300]}"
        record["traceback"] = traceback.format_exc()[-2000:]
    finally:
        gc.collect = collect
    if not record["points"]:  # stopped early: keep the curve up to the stop
        record["points"] = extra.pop("points_so_far", [])
    extra.pop("points_so_far", None)
    record.update(extra)
    record["wall_time"] = time.perf_counter() - start
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    record["environment"] = environment()
    return record


def environment() -> dict[str, str]:
    """The interpreter and library versions a run ran with."""
    import transformers
    import trl

    return {"python": sys.executable, "trl": trl.__version__, "transformers": transformers.__version__}


def time_generation(trainer) -> list[float]:
    """Accumulate the seconds this package's trainer spends sampling rollouts (generation, and with vLLM the weight
    sync and the trainer's forward over the samples), in a one-element list."""
    total = [0.0]
    generate = trainer.runner.sample

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    trainer.runner.sample = timed
    return total


def _run_dir(spec: dict) -> str:
    """A fresh output directory per run: runs in parallel (or in another benchmark) never share one."""
    root = Path("/tmp/trl_replay_ppo_benchmark/runs")
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{spec['task']}-{spec['kind']}-{spec['seed']}-", dir=root)


def _train(spec: dict, extra: dict) -> dict:
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    data = task_data(spec["task"])
    models = load_tiny_models(model_dirs(spec.get("models", data.models)))
    tokenizer = models["tokenizer"]
    settings = dict(spec["settings"])
    response_length = settings["response_length"]
    evaluator = Evaluator(data, tokenizer, response_length)
    reward = CountingReward(data.reward, tokenizer)
    common = {
        "output_dir": _run_dir(spec),
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": spec["seed"],
        "lr_scheduler_type": "constant",
        "bf16": False,
    }
    if spec["kind"] == "grpo":
        trainer, episodes, score_key = _grpo(spec, settings, common, models, data, reward)
    else:
        trainer, episodes, score_key = _ppo(spec, settings, common, models, data, reward)
    counter = StepCounter(trainer.optimizer) if spec["kind"] != "grpo" else None  # GRPO builds it in train()

    def policy() -> torch.nn.Module:
        model = trainer.accelerator.unwrap_model(trainer.model)
        return model if spec["kind"] == "grpo" else model.policy

    curve = Curve(evaluator, episodes, policy, spec["eval_every"], score_key, spec.get("stop_at"))
    trainer.add_callback(curve)
    trainer.remove_callback(PrinterCallback)
    generation = time_generation(trainer) if spec["kind"] == "ours" else None
    curve.record(force=True)
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        extra.update(
            {
                "train_seconds": time.perf_counter() - started - curve.eval_seconds,
                "generation_seconds": generation[0] if generation else None,
                "max_empty_fraction": curve.max_empty_fraction,
                "skipped_steps": curve.skipped_steps,
                "points_so_far": curve.points,
            }
        )
        shutil.rmtree(common["output_dir"], ignore_errors=True)
    if curve.points[-1]["episode"] != episodes():
        curve.record(force=True)
    trained_tokens = None  # stock TRL does not count them
    if spec["kind"] == "grpo":
        trained_tokens = reward.tokens * settings.get("num_iterations", 1)
    elif spec["kind"] == "ours":
        trained_tokens = trainer.update_metrics.trained_tokens
    return {
        "points": curve.points,
        "generated": episodes(),
        "optimizer_steps": counter.steps if counter is not None else trainer.state.global_step,
        "trained_tokens": trained_tokens,
    }


def _ppo(spec, settings, common, models, data, reward):
    from trl_replay_ppo import ReplayPPOConfig
    from trl_replay_ppo.tasks.tiny import tiny_trainer

    budget = {"total_episodes": spec["budget"], "num_sample_generations": 0}
    if spec["kind"] == "stock":
        from trl_replay_ppo.integrations.compat import trl_ppo

        PPOConfig, PPOTrainer = trl_ppo()
        gc.collect = lambda generation=2: 0  # TRL calls it twice per update; on a tiny model it dominates the time
        tokenizer = models["tokenizer"]
        tokenized = data.train.map(lambda row: tokenizer(row["prompt"]), remove_columns=data.train.column_names)
        args = PPOConfig(**common, **budget, **settings)
        trainer = tiny_trainer(models, args, tokenized, PPOTrainer, reward_model=data.reward_model(tokenizer))
    else:
        args = ReplayPPOConfig(**common, **budget, **settings)
        trainer = tiny_trainer(models, args, data.train, reward_funcs=reward)
    return trainer, lambda: trainer.state.episode, "objective/scores"


def _grpo(spec, settings, common, models, data, reward):
    from trl import GRPOConfig, GRPOTrainer

    settings = dict(settings)
    response_length = settings.pop("response_length")
    num_iterations = settings.get("num_iterations", 1)
    batch = settings["per_device_train_batch_size"]
    steps = math.ceil(spec["budget"] / batch) * num_iterations
    args = GRPOConfig(**common, **settings, max_completion_length=response_length, max_steps=steps, logging_steps=1)
    trainer = GRPOTrainer(
        model=models["policy"],
        reward_funcs=reward,
        args=args,
        train_dataset=data.train,
        processing_class=models["tokenizer"],
    )
    return trainer, lambda: reward.calls, "reward"


if __name__ == "__main__":
    spec_file, record_file = sys.argv[1:3]
    Path(record_file).write_text(json.dumps(run(json.loads(Path(spec_file).read_text()))))
