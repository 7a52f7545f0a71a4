"""The command line: train from a YAML config on local files, --help, the shipped configs, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from trl_replay_ppo.cli.main import main
from trl_replay_ppo.cli.train import config_reference, make_parser
from trl_replay_ppo.trainer.memory import gpu_memory_budget, qwen3_0_6b_config

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
    {"question": "Sara had 10 dollars and spent 3. How many left?", "answer": "10 - 3 = 7\n#### 7"},
    {"question": "What is 5 times 6?", "answer": "5 * 6 = 30\n#### 30"},
]


def write_tiny_run(tmp_path: Path, tiny_dirs, **overrides) -> Path:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS * 4))
    config = {
        "model_name_or_path": str(tiny_dirs["policy"]),
        "dataset_name": str(data),
        "dataset_test_split": "train",
        "prompt_column": "question",
        "reward_funcs": ["gsm8k_accuracy", "format"],
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "num_ppo_epochs": 1,
        "total_episodes": 16,
        "response_length": 6,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": 2,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "replay_sample_size": 4,
        "min_replay_size": 4,
        "replay_buffer_size": 32,
        "disable_tqdm": True,
        "num_sample_generations": 0,
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_from_a_yaml_config_on_local_files(tmp_path, tiny_dirs):
    assert main(["train", "--config", str(write_tiny_run(tmp_path, tiny_dirs))]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/gsm8k_accuracy" in r for r in records) and any(
        "eval_rewards/format_reward" in r for r in records
    )
    assert (run / "model.safetensors").is_file()  # the final policy


def test_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--replay_sample_size", "--use_priority_sampling", "--reward_funcs", "--lora_r", "--prompt_column"):
        assert option in text
    assert "Replayed episodes added to each update, per rank" in text


def test_console_script_and_module_entry_points():
    for command in (["trl-replay-ppo"], [sys.executable, "-m", "trl_replay_ppo"]):
        executable = Path(sys.executable).parent / command[0] if command[0] == "trl-replay-ppo" else command[0]
        result = subprocess.run([str(executable), *command[1:], "config-reference"], capture_output=True, text=True)
        assert result.returncode == 0 and "`replay_sample_size`" in result.stdout


def test_version_help_and_import_do_not_load_torch():
    code = (
        "import sys, trl_replay_ppo; from trl_replay_ppo.cli.main import main; main(['--help']); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(trl_replay_ppo.__version__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == metadata.version("trl_replay_ppo")
    version = subprocess.run([sys.executable, "-m", "trl_replay_ppo", "--version"], capture_output=True, text=True)
    assert version.stdout == f"trl-replay-ppo {metadata.version('trl_replay_ppo')}\n"


def test_every_public_name_resolves_and_the_package_is_typed():
    import trl_replay_ppo

    assert all(getattr(trl_replay_ppo, name) is not None for name in trl_replay_ppo.__all__)
    assert trl_replay_ppo.PPOTrainerWithReplay is trl_replay_ppo.ReplayPPOTrainer
    assert (Path(trl_replay_ppo.__file__).parent / "py.typed").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        trl_replay_ppo.Nope  # noqa: B018


def parse_shipped(name: str):
    # transformers refuses bf16 on a machine without a GPU unless `use_cpu` is set.
    return make_parser().parse_args_and_config(
        ["--config", str(ROOT / "trl_replay_ppo/cli/examples/configs" / name), "--use_cpu", "true"]
    )


@pytest.mark.parametrize("name", ["gsm8k_qwen3_0.6b_lora.yaml", "gsm8k_qwen3_0.6b_full.yaml"])
def test_shipped_gsm8k_configs_parse_offline(name):
    script, args, model_args = parse_shipped(name)
    assert script.reward_funcs == ["gsm8k_accuracy", "format"] and args.use_replay_buffer
    assert model_args.model_name_or_path == "Qwen/Qwen3-0.6B"


def test_lora_gsm8k_config_fits_16gb():
    from trl import get_peft_config

    _, args, model_args = parse_shipped("gsm8k_qwen3_0.6b_lora.yaml")
    budget = gpu_memory_budget(qwen3_0_6b_config(), args, get_peft_config(model_args))
    assert budget["total"] < 0.8 * 16e9 / 2**30, budget
    assert args.bf16 and args.shared_value_head and args.gradient_checkpointing


def test_unknown_reward_function_is_named(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, reward_funcs=["gsm8k_acuracy"])
    with pytest.raises(ValueError, match="Unknown reward function 'gsm8k_acuracy'"):
        main(["train", "--config", str(config)])


def test_reward_function_by_module_path(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, reward_funcs=["trl_replay_ppo.rewards:nope"])
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        main(["train", "--config", str(config)])


def test_missing_dataset_column_is_named(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, prompt_column="problem")
    with pytest.raises(ValueError, match=r"`prompt_column='problem'` is not a column"):
        main(["train", "--config", str(config)])


def test_unknown_yaml_key_is_named(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, replay_sampel_size=4)
    with pytest.raises(ValueError, match="replay_sampel_size"):
        main(["train", "--config", str(config)])


def test_readme_config_reference_is_in_sync():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", readme, re.S)
    assert match, "README lacks the generated config reference"
    assert match.group(1) == config_reference(), "regenerate it: trl-replay-ppo config-reference"


def test_yaml_written_by_hand_is_read_as_meant(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, total_episodes=8)
    text = config.read_text().replace("reward_funcs:\n- gsm8k_accuracy\n- format\n", "reward_funcs: format\n")
    config.write_text(text + "reward_weights: [5e-1]\n")  # YAML reads 5e-1 as a string
    script, args, _ = make_parser().parse_args_and_config(["--config", str(config)])
    assert script.reward_funcs == ["format"] and args.reward_weights == [0.5]
    assert main(["train", "--config", str(config)]) == 0


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("num_ppo_epochs: 1.5", r"`num_ppo_epochs` must be an integer; got num_ppo_epochs=1.5"),
        ("learning_rate: .inf", r"`learning_rate` must be a finite number"),
        ("reward_weights: [1, fast]", r"`reward_weights` must be a number; got reward_weights='fast'"),
    ],
)
def test_bad_yaml_values_name_the_field(tmp_path, tiny_dirs, line, match):
    config = write_tiny_run(tmp_path, tiny_dirs)
    key = line.split(":")[0]
    kept = [row for row in config.read_text().splitlines() if not row.startswith(f"{key}:")]
    config.write_text("\n".join([*kept, line]) + "\n")
    with pytest.raises(ValueError, match=match):
        main(["train", "--config", str(config)])


def test_a_yaml_without_a_model_says_so(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs)
    config.write_text("\n".join(r for r in config.read_text().splitlines() if not r.startswith("model_name_or_path")))
    with pytest.raises(ValueError, match="`model_name_or_path` is missing"):
        main(["train", "--config", str(config)])


def test_examples_are_written_from_the_package_and_never_overwrite(tmp_path, capsys):
    assert main(["examples", str(tmp_path)]) == 0
    lora = tmp_path / "configs" / "gsm8k_qwen3_0.6b_lora.yaml"
    assert (tmp_path / "accelerate" / "cpu_2proc.yaml").is_file() and "model_name_or_path" in lora.read_text()
    lora.write_text("edited")
    assert main(["examples", str(tmp_path)]) == 0
    assert lora.read_text() == "edited" and f"kept {lora} (exists)" in capsys.readouterr().out


def test_the_wheel_ships_the_examples_and_py_typed(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("trl_replay_ppo-*.whl"))).namelist()
    for shipped in ("cli/examples/configs/gsm8k_qwen3_0.6b_lora.yaml", "cli/examples/accelerate/ddp.yaml", "py.typed"):
        assert f"trl_replay_ppo/{shipped}" in names
    assert any(name.endswith("licenses/LICENSE") or name.endswith("/LICENSE") for name in names)
