"""Checkpoints never unpickle: a crafted file is refused with its name, and its payload never runs."""

from __future__ import annotations

import pathlib
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

import trl_replay_ppo
from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.checkpointing.directories import CheckpointFormatError
from trl_replay_ppo.checkpointing.state_files import StateFileError, load_state, save_state
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

CHECKPOINT_FILES = (
    "optimizer.safetensors",
    "scheduler.safetensors",
    "rank_0.safetensors",
    "trainable_params.safetensors",
    "ppo_state.json",
    "trainer_state.json",
)
PICKLE_FORMAT_FILES = ("optimizer.pt", "scheduler.pt", "rank_0.pt")


class Payload:
    """Unpickling this creates ``marker``: what an attacker would put in a shared checkpoint."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _trainer(tiny_dirs, output_dir):
    args = tiny_config(
        output_dir,
        output_dir=str(output_dir),
        total_episodes=16,
        save_strategy="steps",
        save_steps=2,
        use_replay_buffer=True,
        replay_buffer_size=16,
        min_replay_size=4,
        replay_sample_size=4,
    )
    tiny = load_tiny_models(tiny_dirs)
    return make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, tiny_dirs):
    output_dir = tmp_path_factory.mktemp("saved")
    _trainer(tiny_dirs, output_dir).train()
    return output_dir / "checkpoint-4"


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker)))  # the only unpickling in this suite, of our own bytes
    assert marker.exists()


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_payload_in_any_checkpoint_file_is_refused_and_never_runs(tmp_path, tiny_dirs, saved_checkpoint, name):
    checkpoint = tmp_path / "run" / "checkpoint-4"
    shutil.copytree(saved_checkpoint, checkpoint)
    marker = tmp_path / "pwned"
    (checkpoint / name).write_bytes(pickle.dumps(Payload(marker)))
    trainer = _trainer(tiny_dirs, tmp_path / "run")
    with pytest.raises(StateFileError, match=re.escape(str(checkpoint / name)) + ".*not a valid checkpoint file"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()


@pytest.mark.parametrize("name", PICKLE_FORMAT_FILES)
def test_a_pickle_format_checkpoint_is_refused_unopened(tmp_path, tiny_dirs, saved_checkpoint, name):
    checkpoint = tmp_path / "run" / "checkpoint-4"
    shutil.copytree(saved_checkpoint, checkpoint)
    for new_name in ("optimizer.safetensors", "scheduler.safetensors", "rank_0.safetensors"):
        (checkpoint / new_name).unlink()
    marker = tmp_path / "pwned"
    for old_name in PICKLE_FORMAT_FILES:
        torch.save(Payload(marker) if old_name == name else {}, checkpoint / old_name)
    for resume in (str(checkpoint), True):
        trainer = _trainer(tiny_dirs, tmp_path / "run")
        with pytest.raises(CheckpointFormatError, match=rf"{re.escape(name)}.*refuses to load it: unpickling"):
            trainer.train(resume_from_checkpoint=resume)
    assert not marker.exists()


def test_state_files_round_trip_exactly(tmp_path):
    state = {
        "python": (3, tuple(range(5)), None),
        "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.5),
        "tensors": [torch.tensor([1.5, float("nan")]), torch.zeros(0, dtype=torch.long), torch.tensor(7)],
        "int_keys": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "flags": np.array([True, False]),
        "scalars": {
            "big": 2**100,
            "float": np.float64(0.25),
            "none": None,
            "__tuple__": "a key that looks like a tag",
        },
    }
    save_state(state, tmp_path / "state.safetensors")
    loaded = load_state(tmp_path / "state.safetensors")
    assert loaded["python"] == state["python"] and isinstance(loaded["python"][1], tuple)
    assert loaded["numpy"][0] == "MT19937" and loaded["numpy"][1].dtype == np.uint32
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1]) and loaded["numpy"][2:] == (2, 0, 0.5)
    assert torch.equal(loaded["tensors"][0][:1], state["tensors"][0][:1]) and loaded["tensors"][0][1].isnan()
    assert loaded["tensors"][1].dtype == torch.long and loaded["tensors"][1].numel() == 0
    assert loaded["tensors"][2].shape == () and loaded["tensors"][2].item() == 7
    assert set(loaded["int_keys"]) == {0, 1} and torch.equal(loaded["int_keys"][0]["step"], torch.tensor(3.0))
    assert loaded["flags"].dtype == bool and loaded["flags"].tolist() == [True, False]
    assert loaded["scalars"] == {
        "big": 2**100,
        "float": 0.25,
        "none": None,
        "__tuple__": "a key that looks like a tag",
    }


def test_state_files_refuse_what_is_not_data(tmp_path):
    with pytest.raises(TypeError, match=r"Cannot save a Payload at state\['x'\]"):
        save_state({"x": Payload(tmp_path / "m")}, tmp_path / "state.safetensors")


def test_no_unpickling_anywhere_in_the_package():
    root = pathlib.Path(trl_replay_ppo.__file__).parent
    hits = []
    for source in root.rglob("*.py"):
        text = source.read_text()
        for pattern in (
            r"weights_only\s*=\s*False",
            r"pickle\.loads?\b",
            r"\bdill\b",
            r"torch\.load\((?![^)]*weights_only\s*=\s*True)",
        ):
            hits += [f"{source.relative_to(root)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not hits, hits
