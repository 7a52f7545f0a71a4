"""Replay inside the trainer: recomputed values/advantages, weights, parity, and a learning benefit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import LogRecorder, make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.core.advantages import compute_gae, shaped_rewards
from trl_replay_ppo.core.kl import kl_estimate
from trl_replay_ppo.models.forwards import sequence_scores
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.tasks.tiny import load_tiny_models

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

REPLAY = {"use_replay_buffer": True, "replay_buffer_size": 64, "min_replay_size": 8, "replay_sample_size": 4}


def replay_trainer(tiny, tmp_path, **overrides):
    args = tiny_config(tmp_path, **{**REPLAY, "total_episodes": 40, **overrides})
    return make_trainer(tiny, args, make_digits_dataset(40), reward_model=None, reward_funcs=digits_reward)


def test_replayed_rows_use_recomputed_values_and_advantages(tmp_path, tiny):
    trainer = replay_trainer(tiny, tmp_path)
    pad = trainer.processing_class.pad_token_id
    values_at_generation = {}
    replayed_values = []
    rollout, compute_advantages = trainer.rollout, trainer.compute_advantages

    def key(batch, row):  # an episode's tokens without padding
        tokens = batch.query_responses[row][: batch.context_length + int(batch.sequence_lengths[row]) + 1]
        return tuple(t for t in tokens.tolist() if t != pad)

    def recording_rollout(prompts):
        batch = rollout(prompts)
        for row in range(len(batch)):
            values_at_generation[key(batch, row)] = batch.values[row, 0].item()
        return batch

    def checking_advantages(batch):
        if batch.num_fresh == len(batch):
            return compute_advantages(batch)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        replayed = slice(batch.num_fresh, None)
        full_value, _, _ = sequence_scores(
            unwrapped.value_model, batch.query_responses[replayed], pad, batch.context_length
        )
        expected = full_value[:, batch.context_length - 1 : -1].squeeze(-1)
        expected = torch.masked_fill(expected, batch.padding_mask_p1[replayed], 0)
        torch.testing.assert_close(batch.values[replayed], expected, rtol=1e-5, atol=1e-6)  # the critic of now
        batch = compute_advantages(batch)
        kl = kl_estimate(batch.proximal_logprobs, batch.ref_logprobs, "k1")
        rewards, _ = shaped_rewards(kl, batch.scores, batch.score_index, trainer.kl_ctl.value)
        advantages, _ = compute_gae(rewards, batch.values, trainer.args.gamma, trainer.args.lam)
        torch.testing.assert_close(batch.raw_advantages, advantages)
        for row in range(batch.num_fresh, len(batch)):
            replayed_values.append((batch.values[row, 0].item(), values_at_generation[key(batch, row)]))
        return batch

    trainer.rollout, trainer.compute_advantages = recording_rollout, checking_advantages
    trainer.train()
    assert replayed_values, "replay never started"
    assert any(now != then for now, then in replayed_values)  # not the values stored at generation
    assert trainer.state.log_history[-1]["replay/episodes"] == 4


def test_fresh_rows_have_weight_exactly_one_and_replayed_rows_are_weighted(tmp_path, tiny):
    trainer = replay_trainer(tiny, tmp_path, use_priority_sampling=True, replay_importance_cap=1.5)
    batches = []
    update = trainer.ppo_update

    def recording_update(batch):
        batches.append(batch)
        return update(batch)

    trainer.ppo_update = recording_update
    trainer.train()
    mixed = [b for b in batches if b.token_weights is not None]
    assert mixed
    for batch in mixed:
        assert torch.equal(
            batch.token_weights[: batch.num_fresh], torch.ones_like(batch.token_weights[: batch.num_fresh])
        )
        replayed = slice(batch.num_fresh, None)
        truncated = batch.token_weights[replayed] / batch.row_weights[replayed, None]  # the IS factor alone
        valid = ~batch.padding_mask[replayed]
        assert truncated[valid].max() <= 1.5 + 1e-6 and truncated[valid].min() > 0
        assert torch.equal(batch.row_weights[: batch.num_fresh], torch.ones(batch.num_fresh))
        assert torch.equal(batch.proximal_logprobs[: batch.num_fresh], batch.logprobs[: batch.num_fresh])
    log = trainer.state.log_history[-1]
    assert log["replay/is_weight_mean"] > 0 and 0 < log["replay/ess_priority"] <= 1
    assert 0 <= log["replay/clipfrac"] <= 1
    assert log["buffer/priority_mean"] > 0
    assert log["efficiency/sample_efficiency"] > 1.0


def test_self_imitation_trains_on_replayed_rows_only(tmp_path, tiny):
    trainer = replay_trainer(tiny, tmp_path, self_imitation_coef=1.0, replay_min_ess=0.01)
    imitated = []
    loss = trainer.micro_batch_loss

    def recording_loss(batch, rows):
        value, stats = loss(batch, rows)
        imitated.append(("sil_loss" in stats, bool((rows >= batch.num_fresh).any())))
        return value, stats

    trainer.micro_batch_loss = recording_loss
    trainer.train()
    assert any(has_replayed for _, has_replayed in imitated)
    assert all(has_term == has_replayed for has_term, has_replayed in imitated)  # the term exactly where replayed
    log = trainer.state.log_history[-1]
    assert log["loss/self_imitation"] >= 0 and 0 < log["replay/ess_behaviour"] <= 1
    assert log["replay/low_ess_skips"] == 0


def test_replay_that_has_not_started_is_bitwise_replay_off(tmp_path, tiny_dirs):
    runs = {}
    for use_replay in (False, True):
        tiny = load_tiny_models(tiny_dirs)
        trainer = replay_trainer(tiny, tmp_path, use_replay_buffer=use_replay, min_replay_size=64)
        recorder = LogRecorder()
        trainer.add_callback(recorder)
        trainer.train()
        runs[use_replay] = (recorder.logs, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    (off_logs, off_weights), (on_logs, on_weights) = runs[False], runs[True]
    for off, on in zip(off_logs, on_logs, strict=True):
        for name, value in off.items():
            if name != "eps":
                assert on[name] == value or (math.isnan(on[name]) and math.isnan(value)), name
    assert all(torch.equal(off_weights[k], on_weights[k]) for k in off_weights)
    assert on_logs[-1]["buffer/size"] == 40


def _episodes_to_target(logs: list[dict], target: float, window: int = 5) -> float:
    scores = np.array([log["objective/scores"] for log in logs])
    average = np.convolve(scores, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(average >= target)
    return logs[hits[0] + window - 1]["episode"] if len(hits) else np.inf


def test_replay_reaches_the_target_with_fewer_generations(tmp_path, tiny_dirs):
    episodes = {}
    for use_replay in (False, True):
        tiny = load_tiny_models(tiny_dirs)
        args = tiny_config(
            tmp_path,
            per_device_train_batch_size=16,
            num_ppo_epochs=4,
            total_episodes=1600,
            response_length=8,
            learning_rate=3e-4,
            lr_scheduler_type="constant",
            kl_coef=0.01,
            temperature=1.0,
            use_replay_buffer=use_replay,
            replay_buffer_size=256,
            min_replay_size=32,
            replay_sample_size=32,
        )
        trainer = make_trainer(tiny, args, make_digits_dataset(512), reward_model=None, reward_funcs=digits_reward)
        recorder = LogRecorder()
        trainer.add_callback(recorder)
        trainer.train()
        episodes[use_replay] = _episodes_to_target(recorder.logs, target=0.25)
    assert episodes[True] < episodes[False], episodes


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"replay_sample_size": 64, "replay_buffer_size": 32}, "`replay_sample_size`=64 exceeds `replay_buffer_size`"),
        ({"min_replay_size": 2000}, "`min_replay_size`=2000 exceeds"),
        ({"replay_buffer_size": 0}, "replay_buffer_size"),
        ({"replay_sample_size": 0}, "replay_sample_size"),
        ({"replay_ratio": 0}, "replay_ratio"),
        ({"replay_ratio": 2.5}, "`replay_ratio` must be an integer"),
        ({"replay_ratio": 200}, r"`replay_ratio` \* per-rank batch \(200 \* 8\)=1600 exceeds `replay_buffer_size`"),
        ({"min_replay_size": -1}, "min_replay_size"),
        ({"max_replay_reuse": 0}, "max_replay_reuse"),
        ({"staleness_threshold": -1}, "staleness_threshold"),
        ({"priority_alpha": -0.5}, "priority_alpha"),
        ({"priority_beta": 1.5}, "priority_beta"),
        ({"priority_beta": -0.1}, "priority_beta"),
        ({"replay_importance_cap": 0.0}, "replay_importance_cap"),
        ({"replay_min_ess": 1.5}, "replay_min_ess"),
        ({"self_imitation_coef": -1.0}, "self_imitation_coef"),
        ({"priority_staleness_decay": 0.0}, "priority_staleness_decay"),
        ({"replay_sample_size": 12}, r"multiple of the per-rank batch .* = 8"),
        (
            {"staleness_threshold": 0},
            r"never start: .* min\(1000, 0 \* 8\) = 0 episodes .* = 100\. Raise `staleness_th",
        ),
        ({"staleness_threshold": 2, "min_replay_size": 40}, r"min\(1000, 2 \* 8\) = 16 episodes .* = 40"),
    ],
)
def test_bad_replay_settings_are_named(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        ReplayPPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, **overrides)


def test_replayed_episodes_follow_the_ratio_unless_a_size_is_set(tmp_path):
    def replayed(**overrides) -> int:
        config = ReplayPPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, **overrides)
        return config.replayed_per_update

    assert replayed() == 3 * 8
    assert replayed(gradient_accumulation_steps=2) == 3 * 16
    assert replayed(replay_ratio=1) == 8
    assert replayed(replay_ratio=1, replay_sample_size=40) == 40


def test_buffer_memory_stays_bounded_over_a_long_run(tmp_path, tiny):
    trainer = replay_trainer(
        tiny, tmp_path, total_episodes=4 * 60, replay_buffer_size=16, min_replay_size=4, staleness_threshold=1000
    )
    sizes, stored = [], []
    after = trainer.after_ppo_update

    def recording(batch):
        after(batch)
        sizes.append(len(trainer.replay))
        stored.append(sum(e is not None for e in trainer.replay.buffer.storage.episodes))

    trainer.after_ppo_update = recording
    trainer.train()
    assert len(sizes) == 60
    assert max(sizes) == 16 and max(stored) == 16  # full, and never more
    assert trainer.replay.buffer.evicted["fifo"] + trainer.replay.buffer.evicted["reuse"] >= 4 * 60 - 16
