"""Hostile files given to `trl-replay-ppo train`: YAML that would expand without bound or hide a key, damaged
data files. Each is refused naming the file (and key) before any model is loaded."""

from __future__ import annotations

import json
import time

import pytest
import transformers

from tests.cli.test_cli import GSM8K_ROWS, write_tiny_run
from trl_replay_ppo.cli.config_file import MAX_BYTES, ConfigFileError, check_config_file
from trl_replay_ppo.cli.main import main
from trl_replay_ppo.cli.train import make_parser


@pytest.fixture
def no_model_loading(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


def _laughs(levels: int, width: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


YAML_CASES = {
    "billion laughs": (_laughs(9, 9), r"uses 72 YAML aliases \(`\*name`\), more than 64"),
    "laughs under the alias bound": (_laughs(7, 9), r"aliases expand to more than 100000 values"),
    "many aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 65) + "]\n", r"uses 65 YAML aliases"),
    "a recursive alias": ("a: &a [1, *a]\n", r"alias refers to itself"),
    "a duplicate key": ("learning_rate: 1e-3\nseed: 1\nlearning_rate: 1.0\n", r"key `learning_rate` appears twice"),
    "a duplicate nested key": ("chat_template_kwargs:\n  a: 1\n  a: 2\n", r"key `a` appears twice \(lines \d+ and"),
    "not YAML": ("a: [1, 2\n", r"is not valid YAML"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_a_hostile_yaml_config_is_refused_quickly_naming_the_file(tmp_path, tiny_dirs, no_model_loading, case):
    text, message = YAML_CASES[case]
    config = write_tiny_run(tmp_path, tiny_dirs)
    config.write_text(config.read_text() + text)
    started = time.time()
    with pytest.raises(ConfigFileError, match=message) as raised:
        main(["train", "--config", str(config)])
    assert str(config) in str(raised.value) and time.time() - started < 5


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path, tiny_dirs, no_model_loading):
    config = write_tiny_run(tmp_path, tiny_dirs)
    config.write_text(config.read_text() + "# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(ConfigFileError, match=r"bytes, more than 1048576"):
        main(["train", f"--config={config}"])


def test_anchors_used_a_few_times_stay_valid(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs)
    text = config.read_text().replace("per_device_eval_batch_size: 4", "per_device_eval_batch_size: &batch 4")
    config.write_text(text.replace("per_device_train_batch_size: 4", "per_device_train_batch_size: *batch"))
    check_config_file(config)
    _, args, _ = make_parser().parse_args_and_config(["--config", str(config)])
    assert args.per_device_train_batch_size == 4


DATA_CASES = {
    "a truncated last line": ("damaged.jsonl", lambda rows: rows[: len(rows) - 20]),
    "a line that is not JSON": ("damaged.jsonl", lambda rows: rows + "not json\n"),
    "an unclosed quote": ("damaged.csv", lambda rows: 'question,answer\n"What is 1+1?,2\n'),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_damaged_data_file_is_named_before_any_model_loads(tmp_path, tiny_dirs, no_model_loading, case):
    name, damage = DATA_CASES[case]
    data = tmp_path / name
    data.write_text(damage("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS * 4)))
    config = write_tiny_run(tmp_path, tiny_dirs, dataset_name=str(data))
    with pytest.raises(ValueError, match=r"`dataset_name`: .* could not be read .*Check that its files are complete"):
        main(["train", "--config", str(config)])


@pytest.mark.parametrize("value", ["1e400", ".inf"])
def test_epochs_that_overflow_are_named(tmp_path, tiny_dirs, no_model_loading, value):
    config = write_tiny_run(tmp_path, tiny_dirs)
    text = config.read_text().replace("total_episodes: 16\n", "")
    config.write_text(text + f"num_train_epochs: {value}\n")
    with pytest.raises(ValueError, match=r"`num_train_epochs` must be a finite number > 0"):
        main(["train", "--config", str(config)])
