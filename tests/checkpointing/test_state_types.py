"""A value of another type anywhere in a checkpoint's JSON state files is refused naming the file (or the
checkpoint, for its format or a setting it was written with), never an error from deep inside a constructor."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.checkpointing.test_validation import _trainer
from trl_replay_ppo import StateFileError
from trl_replay_ppo.checkpointing.reader import read_checkpoint
from trl_replay_ppo.checkpointing.validation import TRAINER_STATE_TYPES
from trl_replay_ppo.integrations.annotations import matches

pytestmark = pytest.mark.trl112

WRONG = ("text", [1], {"a": 1}, None, True, 1, 1.5, -1)
PPO_STATE_PATHS = [
    ("checkpoint_format",),
    ("world_size",),
    ("run_id",),
    ("lineage",),
    ("lineage", "id"),
    ("lineage", "generation"),
    ("lineage", "ancestors"),
    ("fingerprint",),
    ("fingerprint", "num_mini_batches"),
    ("fingerprint", "use_replay_buffer"),
    ("fingerprint", "reward sources"),
    ("fingerprint", "tokenizer"),
    ("state",),
    ("state", "kl_controller"),
]


@pytest.fixture(scope="module")
def saved(tiny_dirs, tmp_path_factory):
    """A saved run: checkpoints at updates 2 and 4."""
    output = tmp_path_factory.mktemp("run") / "out"
    _trainer(tiny_dirs, output).train()
    return output


@pytest.fixture
def reader(saved, tiny_dirs, tmp_path):
    """The saved run and a trainer of the same settings to read its checkpoints with (accelerate is per test)."""
    return saved, _trainer(tiny_dirs, tmp_path / "reader")


def _wrong_values(value, hint=None):
    return [w for w in WRONG if (not matches(w, hint) if hint is not None else type(w) is not type(value))]


def _refused(reader, tmp_path, file, path, wrong):
    saved, trainer = reader
    checkpoint = tmp_path / "damaged" / "checkpoint-4"
    shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.copytree(saved / "checkpoint-4", checkpoint)
    tree = json.loads((checkpoint / file).read_text())
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = wrong
    (checkpoint / file).write_text(json.dumps(tree))
    with pytest.raises((StateFileError, ValueError)) as raised:
        read_checkpoint(trainer, checkpoint)
    named = f"checkpoint-4/{file}" in str(raised.value)
    named_setting = path[0] in ("fingerprint", "checkpoint_format") and f"{checkpoint} " in str(raised.value)
    assert named or named_setting, str(raised.value)


def test_every_trainer_state_key_of_another_type_is_refused(reader, tmp_path):
    saved = json.loads((reader[0] / "checkpoint-4" / "trainer_state.json").read_text())
    checked = 0
    for key, value in saved.items():
        for wrong in _wrong_values(value, TRAINER_STATE_TYPES.get(key)):
            _refused(reader, tmp_path, "trainer_state.json", (key,), wrong)
            checked += 1
    assert checked > 60 and set(saved) <= set(TRAINER_STATE_TYPES)


def test_a_log_entry_that_is_not_a_mapping_of_numbers_is_refused(reader, tmp_path):
    for wrong in ("text", [1], {"loss": [1.0]}, {"loss": {"a": 1}}):
        tree = json.loads((reader[0] / "checkpoint-4" / "trainer_state.json").read_text())
        _refused(reader, tmp_path, "trainer_state.json", ("log_history", 0), wrong)
        assert tree["log_history"]


@pytest.mark.parametrize("path", PPO_STATE_PATHS, ids=".".join)
def test_every_ppo_state_entry_of_another_type_is_refused(reader, tmp_path, path):
    node = json.loads((reader[0] / "checkpoint-4" / "ppo_state.json").read_text())
    for key in path:
        node = node[key]
    for wrong in _wrong_values(node):
        _refused(reader, tmp_path, "ppo_state.json", path, wrong)
