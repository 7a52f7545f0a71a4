"""A checkpoint written by the code before format 3 (trl_replay_ppo 0.2, format 2) is refused, saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, make_trainer, tiny_config
from trl_replay_ppo import CheckpointFormatError
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

FORMAT_2_COMMIT = "d04d0ac9c329ff8d5e2bd10480f27fe25fad365f"  # the last commit that wrote format 2

WRITE_WITH_OLD_CODE = """
import sys
from pathlib import Path
import trl_replay_ppo
assert Path(trl_replay_ppo.__file__).is_relative_to(sys.argv[1]), trl_replay_ppo.__file__
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models, tiny_trainer
models = load_tiny_models({k: Path(sys.argv[2]) / k for k in ("tokenizer", "policy", "reward")})
args = ReplayPPOConfig(**{**__import__("json").loads(sys.argv[3]), "output_dir": sys.argv[4]})
tiny_trainer(models, args, make_digits_dataset(8), reward_funcs=digits_reward).train()
"""


def settings() -> dict:
    return {
        "per_device_train_batch_size": 4,
        "num_mini_batches": 1,
        "total_episodes": 8,
        "response_length": 6,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "num_sample_generations": 0,
        "use_replay_buffer": False,
        "save_strategy": "steps",
        "save_steps": 1,
    }


def test_a_format_2_checkpoint_is_refused_with_what_to_do(tmp_path, tiny, tiny_dirs):
    old_code, output_dir = tmp_path / "format-2-code", tmp_path / "out"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_code), FORMAT_2_COMMIT], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(old_code)}
        models = tiny_dirs["policy"].parent
        command = [sys.executable, "-c", WRITE_WITH_OLD_CODE, str(old_code), str(models)]
        subprocess.run(
            [*command, json.dumps(settings()), str(output_dir)], env=env, cwd=tmp_path, check=True, timeout=300
        )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_code)], check=True)
    checkpoint = output_dir / "checkpoint-2"
    assert json.loads((checkpoint / "ppo_state.json").read_text())["checkpoint_format"] == 2

    args = tiny_config(tmp_path, **{**settings(), "output_dir": str(output_dir), "total_episodes": 12})
    trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
    expected = r"checkpoint-2 has checkpoint format 2, written by trl_replay_ppo 0\.2; this version reads format 3"
    for resume_from in (True, str(checkpoint)):  # the newest is not skipped as damage, nor is an older one tried
        with pytest.raises(CheckpointFormatError, match=expected) as refused:
            trainer.train(resume_from_checkpoint=resume_from)
        assert "trl_replay_ppo==0.2.*" in str(refused.value) and "`policy/` folder" in str(refused.value)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # untouched


def test_a_development_format_3_checkpoint_without_lineage_is_a_format_error_not_damage(tmp_path, tiny, tiny_dirs):
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    args = tiny_config(tmp_path, total_episodes=8, save_strategy="steps", save_steps=1)
    make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward).train()
    for step in (1, 2):  # both checkpoints as the interim layout wrote them: resume=True must not skip past them
        ppo_state = tmp_path / "out" / f"checkpoint-{step}" / "ppo_state.json"
        state = json.loads(ppo_state.read_text())
        del state["lineage"]
        ppo_state.write_text(json.dumps(state))
    args = tiny_config(tmp_path, total_episodes=12, save_strategy="steps", save_steps=1)
    trainer = make_trainer(
        load_tiny_models(tiny_dirs), args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward
    )
    with pytest.raises(CheckpointFormatError, match=r"checkpoint-2 was written by a development build .*`policy/`"):
        trainer.train(resume_from_checkpoint=True)
