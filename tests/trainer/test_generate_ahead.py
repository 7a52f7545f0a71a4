"""`generate_ahead`: each batch sampled by the policy one update older, in a second process; exact resume; refusals."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from tests.checkpointing.test_resume import _trainer
from tests.helpers import LogRecorder, make_trainer, snapshot, stop_after, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.models.generator_process import GeneratorProcess
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.trainer.parts import generate_ahead

AHEAD = {"generate_ahead": True, "num_ppo_epochs": 2, "learning_rate": 3e-3}


def test_each_batch_is_sampled_by_the_policy_one_update_older(tmp_path, tiny):
    args = tiny_config(tmp_path, total_episodes=20, **AHEAD)  # 5 updates of 4 episodes
    trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    weights = [snapshot(policy)]  # weights[k]: after update k
    batches = []
    sample = trainer.runner.sample

    def recording_sample(queries, generation_kwargs, update):
        query_responses, behaviour, proximal = sample(queries, generation_kwargs, update)
        batches.append((query_responses, behaviour, proximal))
        return query_responses, behaviour, proximal

    class Snapshots(LogRecorder):
        def on_step_end(self, args, state, control, **kwargs):
            weights.append(snapshot(policy))

    logs = Snapshots()
    trainer.runner.sample = recording_sample
    trainer.add_callback(logs)
    trainer.train()

    assert trainer.ahead.generator.process is None  # stopped when training ended
    staleness = [log["rollout/staleness"] for log in logs.logs if "rollout/staleness" in log]
    assert staleness == [0.0, 1.0, 1.0, 1.0, 1.0]
    replica = copy.deepcopy(policy)
    context_length = batches[0][0].shape[1] - args.response_length
    for update, (query_responses, behaviour, proximal) in enumerate(batches, 1):
        sampled_by = weights[max(update - 2, 0)]  # update k's batch: sampled during update k-1, with w_{k-2}
        replica.load_state_dict(sampled_by, strict=False)
        expected = trainer.runner.response_logprobs(replica, query_responses, context_length)
        valid = torch.isfinite(expected) & (expected > -1e6)
        torch.testing.assert_close(behaviour[valid], expected[valid], atol=1e-4, rtol=1e-4)
        replica.load_state_dict(weights[update - 1], strict=False)  # the proximal policy: the trainer's own
        own = trainer.runner.response_logprobs(replica, query_responses, context_length)
        torch.testing.assert_close(proximal, own)
    diffs = [log["ahead/logprob_diff_mean"] for log in logs.logs if "ahead/logprob_diff_mean" in log]
    assert diffs[0] < 1e-4 < min(diffs[1:])  # the first batch is the trainer's own policy; later ones are stale


def test_resume_with_generate_ahead_is_exact(tmp_path, tiny_dirs):
    straight = _trainer(tiny_dirs, tmp_path, tmp_path / "straight", **AHEAD)
    straight.train()

    first = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed", **AHEAD)
    stop_after(first, 4)
    first.train()
    resumed = _trainer(tiny_dirs, tmp_path, tmp_path / "resumed", **AHEAD)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))

    straight_weights = straight.accelerator.unwrap_model(straight.model).state_dict()
    resumed_weights = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for name, weight in straight_weights.items():
        assert torch.equal(weight, resumed_weights[name]), name
    tail = [log for log in straight.state.log_history if log["step"] > 4 and "rollout/staleness" in log]
    resumed_tail = [log for log in resumed.state.log_history if log["step"] > 4 and "rollout/staleness" in log]
    assert [log["rollout/staleness"] for log in resumed_tail] == [1.0] * 4  # the checkpoint kept update 5's batch
    assert [log["objective/scores"] for log in resumed_tail] == [log["objective/scores"] for log in tail]


def test_a_checkpoint_without_the_pending_batch_is_refused(tmp_path, tiny_dirs):
    first = _trainer(tiny_dirs, tmp_path, tmp_path / "out", total_episodes=32)
    first.train()
    resumed = _trainer(tiny_dirs, tmp_path, tmp_path / "out", total_episodes=64, **AHEAD)
    with pytest.raises(Exception, match="generate_ahead"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))


def test_generate_ahead_with_vllm_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`generate_ahead`.*`use_vllm`"):
        ReplayPPOConfig(output_dir=str(tmp_path), generate_ahead=True, use_vllm=True)


@pytest.mark.parametrize(
    ("deepspeed", "device", "reason"),
    [(True, "cpu", "DeepSpeed shards or offloads the policy"), (False, "meta", "the policy is on meta")],
)
def test_where_it_cannot_work_it_is_refused(tmp_path, deepspeed, device, reason):
    args = ReplayPPOConfig(output_dir=str(tmp_path), generate_ahead=True)
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    policy = torch.nn.Linear(2, 2, device=device)
    with pytest.raises(ValueError, match=rf"`generate_ahead=True` cannot run here: {reason}.*`generate_ahead=False`"):
        generate_ahead(args, accelerator, None, policy, None, None, deepspeed)


def test_a_failure_in_the_generator_process_is_raised_with_its_traceback():
    generator = GeneratorProcess(
        torch.nn.Linear(2, 2), pad_token_id=0, generation_kwargs={"max_new_tokens": 2}, chunk=1, seed=0, threads=1
    )
    try:
        generator.push(torch.nn.Linear(2, 2))
        generator.submit(torch.zeros(1, 3, dtype=torch.long), update=1)
        with pytest.raises(RuntimeError, match=r"(?s)generator process.*failed.*AttributeError.*generate"):
            generator.collect()
    finally:
        generator.close()
    assert generator.process is None


def test_lora_adapters_reach_the_generator(tmp_path, tiny):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = tiny_config(tmp_path, total_episodes=16, shared_value_head=True, **AHEAD)  # 4 updates
    trainer = make_trainer(
        tiny,
        args,
        make_digits_dataset(16),
        reward_model=None,
        reward_funcs=digits_reward,
        value_model=None,
        peft_config=lora,
    )
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    weights = [snapshot(policy)]

    class Snapshots(LogRecorder):
        def on_step_end(self, args, state, control, **kwargs):
            weights.append(snapshot(policy))

    trainer.add_callback(Snapshots())
    trainer.train()
    adapters = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    replica = dict(trainer.ahead.generator.replica.named_parameters())
    last_pushed = weights[2]  # update 4's batch was submitted during update 3, with the weights after update 2
    assert all(torch.equal(replica[name], last_pushed[name]) for name in adapters)
    assert not all(torch.equal(replica[name], weights[0][name]) for name in adapters)
