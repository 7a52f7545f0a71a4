"""A checkpoint is checked whole before any of it is applied: each kind of damage is a `StateFileError` naming the
file and the field, raised before any generation, with every file of the output directory left as it was."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import StateFileError
from trl_replay_ppo.checkpointing.ownership import LOCK_FILE
from trl_replay_ppo.checkpointing.state_files import load_state, save_state
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

CONFIG = {
    "total_episodes": 16,
    "save_strategy": "steps",
    "save_steps": 2,
    "use_replay_buffer": True,
    "use_priority_sampling": True,
    "replay_buffer_size": 16,
    "min_replay_size": 4,
    "replay_sample_size": 4,
}


def _trainer(tiny_dirs, output_dir, tokenizer=None, **overrides):
    tiny = load_tiny_models(tiny_dirs)
    if tokenizer is not None:
        tiny["tokenizer"] = tokenizer
    args = tiny_config(output_dir, **{**CONFIG, "output_dir": str(output_dir), **overrides})
    return make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)


@pytest.fixture(scope="module")
def saved_run(tiny_dirs, tmp_path_factory):
    """A run's output directory with checkpoints at updates 2 and 4 (replay buffer holding episodes)."""
    output = tmp_path_factory.mktemp("run") / "out"
    _trainer(tiny_dirs, output).train()
    return output


FIRST = object()  # in a path: the first entry that is set (of a list), or the first key (of a dict)
DELETE = object()  # as a change: remove the entry


def _load(file):
    if file.suffix == ".json":
        return json.loads(file.read_text())
    return load_file(file) if file.name == "trainable_params.safetensors" else load_state(file)


def _save(tree, file):
    if file.suffix == ".json":
        file.write_text(json.dumps(tree))
    elif file.name == "trainable_params.safetensors":
        save_file(tree, file)
    else:
        save_state(tree, file)


def _key(node, key):
    if key is not FIRST:
        return key
    return sorted(node)[0] if isinstance(node, dict) else next(i for i, v in enumerate(node) if v is not None)


def damage(checkpoint, file, path, change):
    """Replace the entry at ``path`` of ``checkpoint/file`` by ``change(entry)`` (or remove it: `DELETE`)."""
    tree = _load(checkpoint / file)
    node = tree
    for key in path[:-1]:
        node = node[_key(node, key)]
    last = _key(node, path[-1])
    if change is DELETE:
        node.pop(last)
    else:
        node[last] = change(node[last])
    _save(tree, checkpoint / file)


def _nan_first(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] = math.nan
    return tensor


def _inf_first(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] = math.inf
    return tensor


def _first_set_to(value):
    def change(array):
        array = array.copy() if hasattr(array, "copy") else array.clone()
        array[0] = value
        return array

    return change


STORAGE = ["replay", "buffer", "storage"]
CASES = {  # case: (file, path, change, what the message says)
    "no fingerprint": ("ppo_state.json", ["fingerprint"], DELETE, r"its keys differ.*missing \['fingerprint'\]"),
    "fingerprint lacks a field": (
        "ppo_state.json",
        ["fingerprint", "tokenizer"],
        DELETE,
        r"fingerprint is damaged: it lacks .*'tokenizer'",
    ),
    "negative KL coefficient": (
        "ppo_state.json",
        ["state", "kl_controller", "value"],
        lambda v: -0.1,
        r"kl_controller is damaged: a negative",
    ),
    "infinite KL coefficient": (
        "ppo_state.json",
        ["state", "kl_controller", "value"],
        lambda v: math.inf,
        r"\['value'\] is damaged: inf",
    ),
    "counter of another type": (
        "ppo_state.json",
        ["state", "scorer", "nonfinite"],
        lambda v: "3",
        r"\['nonfinite'\] is damaged: '3'",
    ),
    "zero processes": ("ppo_state.json", ["world_size"], lambda v: 0, r"world_size is damaged: fewer than one"),
    "negative episode count": ("trainer_state.json", ["episode"], lambda v: -16, r"episode is damaged: -16"),
    "episodes disagree with updates": (
        "trainer_state.json",
        ["episode"],
        lambda v: 20,
        r"damaged: 20 episodes after 4 updates of 4",
    ),
    "best metric not a number": ("trainer_state.json", ["best_metric"], lambda v: "high", r"best_metric is damaged"),
    "NaN weight": ("trainable_params.safetensors", [FIRST], _nan_first, r"is damaged: it holds NaN"),
    "weight of another dtype": (
        "trainable_params.safetensors",
        [FIRST],
        lambda t: t.half(),
        r"dtype torch.float16 where torch.float32",
    ),
    "moment of another shape": (
        "optimizer.safetensors",
        ["state", 0, "exp_avg"],
        lambda t: t[:1],
        r"state\[0\]\['exp_avg'\] is damaged: shape",
    ),
    "infinite moment": (
        "optimizer.safetensors",
        ["state", 1, "exp_avg_sq"],
        _inf_first,
        r"\['exp_avg_sq'\] is damaged: it holds NaN",
    ),
    "a group missing": (
        "optimizer.safetensors",
        ["param_groups"],
        lambda g: g[:-1],
        r"optimizer.safetensors is damaged: its parameter",
    ),
    "a group of another size": (
        "optimizer.safetensors",
        ["param_groups", 0, "params"],
        lambda p: p[:-1],
        r"param_groups\[0\] is damaged",
    ),
    "state of a parameter that is not there": (
        "optimizer.safetensors",
        ["state"],
        lambda s: {**s, 999: {}},
        r"state for parameters this optimizer does not",
    ),
    "scheduler key missing": ("scheduler.safetensors", ["last_epoch"], DELETE, r"is damaged: its keys differ"),
    "negative base rate": (
        "scheduler.safetensors",
        ["base_lrs", 0],
        lambda v: -1.0,
        r"base_lrs\[0\] is damaged: a negative learning",
    ),
    "torch RNG state of another size": (
        "rank_0.safetensors",
        ["rng", "cpu"],
        lambda t: t[:100],
        r"rank_0.safetensors: rng\['cpu'\] is damaged: shape",
    ),
    "python RNG state": (
        "rank_0.safetensors",
        ["rng", "python"],
        lambda s: (3, (*s[1][:-1], 700), None),
        r"python RNG state is not",
    ),
    "prompt position past the dataset": (
        "rank_0.safetensors",
        ["prompt_stream", "position"],
        lambda v: 99,
        r"prompt position 99 is past the 4",
    ),
    "token id outside the vocabulary": (
        "rank_0.safetensors",
        [*STORAGE, "episodes", FIRST, "response"],
        _first_set_to(10**6),
        r"token ids outside",
    ),
    "log-probs of another length": (
        "rank_0.safetensors",
        [*STORAGE, "episodes", FIRST, "logprobs"],
        lambda t: t[:-1],
        r"logprobs for a response",
    ),
    "valid disagrees with the episodes": (
        "rank_0.safetensors",
        [*STORAGE, "valid"],
        lambda v: ~v,
        r"`valid` does not mark exactly",
    ),
    "negative priority": (
        "rank_0.safetensors",
        ["replay", "buffer", "sampler", "priority"],
        _first_set_to(-1.0),
        r"priority negative",
    ),
    "write position outside the ring": (
        "rank_0.safetensors",
        [*STORAGE, "cursor"],
        lambda v: 16,
        r"write position 16 outside a ring of 16",
    ),
}


def _snapshot(directory):
    """Every file's bytes, but the lock file's: it names the latest run to hold the directory (this one)."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK_FILE]
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def _no_generation(trainer):
    def refuse(*args, **kwargs):
        raise AssertionError("generated before refusing")

    trainer.runner.generate = refuse


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_named_before_anything_runs_and_nothing_is_touched(tmp_path, tiny_dirs, saved_run, case):
    file, path, change, message = CASES[case]
    output = tmp_path / "out"
    shutil.copytree(saved_run, output)
    damage(output / "checkpoint-4", file, path, change)
    before = _snapshot(output)
    trainer = _trainer(tiny_dirs, output)
    _no_generation(trainer)
    weights = {k: v.clone() for k, v in trainer.trainable_parameters().items()}
    with pytest.raises(StateFileError, match=message) as raised:
        trainer.train(resume_from_checkpoint=str(output / "checkpoint-4"))
    assert f"checkpoint-4/{file}" in str(raised.value)
    assert "The newest intact checkpoint there is" in str(raised.value)
    assert _snapshot(output) == before
    assert all(p.equal(weights[k]) for k, p in trainer.trainable_parameters().items())  # nothing was applied


def test_resume_true_falls_back_past_a_damaged_checkpoint(tmp_path, tiny_dirs, saved_run, caplog):
    output = tmp_path / "out"
    shutil.copytree(saved_run, output)
    damage(output / "checkpoint-4", *CASES["token id outside the vocabulary"][:3])
    trainer = _trainer(tiny_dirs, output, total_episodes=12)
    trainer.train(resume_from_checkpoint=True)
    assert "Resuming from" in caplog.text and "checkpoint-2; skipped damaged checkpoints: checkpoint-4" in caplog.text
    assert trainer.state.global_step == 3


def test_a_tokenizer_with_its_vocabulary_permuted_is_refused(tmp_path, tiny_dirs, saved_run):
    output = tmp_path / "out"
    shutil.copytree(saved_run, output)
    tokenizer = load_tiny_models(tiny_dirs)["tokenizer"]
    vocab = tokenizer.get_vocab()
    a, b = sorted(vocab)[5:7]  # two ordinary tokens trade ids: same size, other meaning
    vocab[a], vocab[b] = vocab[b], vocab[a]
    permuted = tmp_path / "permuted"
    tokenizer.save_pretrained(permuted)
    tokenizer_json = json.loads((permuted / "tokenizer.json").read_text())
    tokenizer_json["model"]["vocab"] = vocab
    (permuted / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    from transformers import AutoTokenizer

    trainer = _trainer(tiny_dirs, output, tokenizer=AutoTokenizer.from_pretrained(permuted))
    _no_generation(trainer)
    with pytest.raises(ValueError, match=r"written with tokenizer='[0-9a-f]{16}' but this run has tokenizer="):
        trainer.train(resume_from_checkpoint=True)


def test_a_new_learning_rate_is_applied_from_where_the_schedule_was(tmp_path, tiny_dirs, saved_run, caplog):
    output = tmp_path / "out"
    shutil.copytree(saved_run, output)
    trainer = _trainer(tiny_dirs, output, learning_rate=5e-4, total_episodes=20)
    trainer.begin_training(resume_from_checkpoint=str(output / "checkpoint-4"))
    assert "learning_rate changed since" in caplog.text and "continues from update 4 with the new rate" in caplog.text
    scheduler = trainer.lr_scheduler  # linear over this run's 5 updates: at update 4, a fifth of the base rate
    expected = 5e-4 * scheduler.lr_lambdas[0](4)
    assert expected == pytest.approx(1e-4)
    assert scheduler.get_last_lr()[0] == pytest.approx(expected)
    assert all(group["lr"] == pytest.approx(expected) for group in trainer.optimizer.param_groups)


def test_a_resume_that_changes_only_the_replay_ratio_is_valid(tmp_path, tiny_dirs, saved_run):
    output = tmp_path / "out"
    shutil.copytree(saved_run, output)
    trainer = _trainer(tiny_dirs, output, replay_ratio=2, total_episodes=20)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 5
