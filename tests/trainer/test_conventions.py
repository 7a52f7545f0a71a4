"""What a user of TRL's trainers expects: models as ids, a clear word for a string `reward_funcs` or a wrong reward
signature, `predict()` refused by name, a real `training_loss`, and on the command line `--resume_from_checkpoint
true` and an interrupt that says how to continue."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
from datasets import Dataset

from tests.cli.test_cli import write_tiny_run
from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOTrainer
from trl_replay_ppo.cli.main import main
from trl_replay_ppo.cli.train import resume_value
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

pytestmark = pytest.mark.trl112


def test_models_given_as_paths_are_loaded_with_their_tokenizer(tmp_path, tiny_dirs, tiny):
    policy = tmp_path / "policy"
    shutil.copytree(tiny_dirs["policy"], policy)
    tiny["tokenizer"].save_pretrained(policy)  # a Hub model directory holds both
    trainer = ReplayPPOTrainer(
        args=tiny_config(tmp_path, total_episodes=8),
        processing_class=None,
        model=str(policy),
        value_model=str(policy),
        train_dataset=make_digits_dataset(8),
        reward_funcs=digits_reward,
    )
    assert trainer.processing_class.padding_side == "left"
    assert trainer.train().global_step == 2


def test_a_model_object_without_a_tokenizer_says_what_to_pass(tmp_path, tiny):
    with pytest.raises(ValueError, match=r"`processing_class` is required .* or `model` as a Hub id"):
        ReplayPPOTrainer(
            args=tiny_config(tmp_path),
            processing_class=None,
            model=tiny["policy"],
            value_model=tiny["value_model"],
            train_dataset=make_digits_dataset(8),
            reward_funcs=digits_reward,
        )


def test_reward_funcs_as_a_string_is_refused_with_the_grpo_difference(tmp_path, tiny):
    with pytest.raises(TypeError, match=r"`reward_funcs` is the string 'org/reward-model'.*`reward_model=`"):
        make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8), reward_funcs="org/reward-model")


@pytest.mark.parametrize(
    "func",
    [lambda completions: [0.0] * len(completions), lambda prompts, completions: [0.0] * len(completions)],
    ids=["no prompts", "no kwargs"],
)
def test_a_reward_function_of_another_signature_is_shown_the_contract(tmp_path, tiny, func):
    func.__name__ = "judge"
    with pytest.raises(TypeError, match=r"`judge\(.*\)` cannot be called .* `f\(prompts, completions, \*\*kwargs\)`"):
        make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8), reward_model=None, reward_funcs=func)


def test_predict_is_refused_naming_what_to_use(tmp_path, tiny):
    trainer = make_trainer(tiny, tiny_config(tmp_path), make_digits_dataset(8))
    for method in (trainer.predict, trainer.prediction_step, trainer.hyperparameter_search):
        with pytest.raises(NotImplementedError, match=r"has no meaning for PPO training.*"):
            method(make_digits_dataset(4))
    with pytest.raises(NotImplementedError, match=r"`predict\(\)`.*`evaluate\(\)`"):
        trainer.predict(make_digits_dataset(4))


def test_train_returns_the_mean_loss(tmp_path, tiny):
    trainer = make_trainer(tiny, tiny_config(tmp_path, total_episodes=16), make_digits_dataset(8))
    output = trainer.train()
    logged = [h for h in trainer.state.log_history if "loss/policy_avg" in h]
    expected = sum(h["loss/policy_avg"] + 0.1 * h["loss/value_avg"] for h in logged) / len(logged)
    assert len(logged) == 4 and math.isfinite(output.training_loss)
    assert output.training_loss == pytest.approx(expected)


@pytest.mark.parametrize(("flag", "value"), [("true", True), ("True", True), ("false", None), ("ckpt/x", "ckpt/x")])
def test_resume_flag_values(flag, value):
    assert resume_value(flag) == value


def test_cli_resume_true_continues_the_newest_checkpoint(tmp_path, tiny_dirs):
    config = write_tiny_run(tmp_path, tiny_dirs, total_episodes=8)
    assert main(["train", "--config", str(config)]) == 0
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    config.write_text(config.read_text().replace("total_episodes: 8", "total_episodes: 16"))
    assert main(["train", "--config", str(config), "--resume_from_checkpoint", "true"]) == 0
    assert (tmp_path / "run" / "checkpoint-4").is_dir()


def test_an_interrupted_cli_run_says_how_to_continue(tmp_path, tiny_dirs, monkeypatch, capsys):
    def interrupted(self, resume_from_checkpoint=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ReplayPPOTrainer, "train", interrupted)
    assert main(["train", "--config", str(write_tiny_run(tmp_path, tiny_dirs))]) == 130
    assert "Interrupted at update 0. Add `--resume_from_checkpoint true`" in capsys.readouterr().err


def test_trl_example_pad_token_added_without_resizing_trains_with_a_warning(tmp_path, tiny, caplog):
    tokenizer = tiny["tokenizer"]
    rows = tiny["policy"].get_input_embeddings().num_embeddings
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # as TRL's PPO example does, embeddings left as they are
    assert tokenizer.pad_token_id == rows == len(tokenizer) - 1
    with caplog.at_level(logging.WARNING):
        trainer = make_trainer(tiny, tiny_config(tmp_path, total_episodes=8), make_digits_dataset(8))
        trainer.train()
    assert trainer.state.global_step == 2 and trainer.runner.suppressed_token_id is None  # it cannot be sampled
    assert f"The tokenizer has {rows + 1} tokens, the models' embeddings {rows} rows" in caplog.text
    assert "[PAD]" in caplog.text


def test_prompts_holding_ids_past_the_embeddings_are_refused(tmp_path, tiny):
    tokenizer = tiny["tokenizer"]
    rows = tiny["policy"].get_input_embeddings().num_embeddings
    tokenizer.add_tokens(["<tool>"])
    dataset = Dataset.from_dict({"input_ids": [[5, 6, rows], [5, 6, 7], [6, 7, 8], [7, 8, 9]]})
    with pytest.raises(ValueError, match=rf"`train_dataset` holds token id {rows}, past the {rows} embedding rows"):
        make_trainer(tiny, tiny_config(tmp_path), dataset)


def test_a_reward_function_reading_the_trainer_state_passes_the_preflight(tmp_path, tiny):
    steps = []

    def scheduled(prompts, completions, trainer_state, **kwargs):  # TRL's GRPO contract: a curriculum by step
        steps.append(trainer_state.global_step)
        return [float(trainer_state.global_step > 0)] * len(completions)

    trainer = make_trainer(
        tiny,
        tiny_config(tmp_path, total_episodes=8),
        make_digits_dataset(8),
        reward_model=None,
        reward_funcs=scheduled,
    )
    trainer.train()
    assert steps == [0, 0, 1]  # the pre-flight call, then one call per update with the state so far


def test_a_migrated_run_says_once_what_differs_from_trl(tmp_path, tiny, caplog):
    with caplog.at_level(logging.WARNING):
        make_trainer(tiny, tiny_config(tmp_path, use_replay_buffer=True, max_grad_norm=1.0), make_digits_dataset(8))
    said = [r.getMessage() for r in caplog.records if "Differences from TRL's PPOTrainer" in r.getMessage()]
    assert len(said) == 1
    for field in ("use_replay_buffer=True", "max_grad_norm=1.0", "suppress_pad_token=True"):
        assert field in said[0]
    assert "use_replay_buffer=False for TRL's behaviour" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_trainer(tiny, tiny_config(tmp_path / "trl", suppress_pad_token=False), make_digits_dataset(8))
    assert "Differences from TRL's PPOTrainer" not in caplog.text


def test_a_multi_process_launch_that_did_not_join_is_refused(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # `accelerate launch --num_processes 2` on CPU without `use_cpu`
    with pytest.raises(RuntimeError, match=r"started 2 processes .* trains as one of 1.*set `use_cpu=True`"):
        make_trainer(tiny, tiny_config(tmp_path, use_cpu=False), make_digits_dataset(8))
