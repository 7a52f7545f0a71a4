"""Cheaper replayed rows: `replay_epochs` trains replayed rows in the first k PPO epochs, fresh rows in all."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset
from trl_replay_ppo.trainer.epochs import EpochPlan, UpdateProgress

pytestmark = pytest.mark.trl112

REPLAY = {"use_replay_buffer": True, "replay_buffer_size": 64, "min_replay_size": 8, "replay_sample_size": 8}


def test_the_plan_trains_replayed_rows_in_the_first_epochs_only():
    np.random.seed(0)
    plan = EpochPlan(num_rows=16, num_fresh=4, epochs=3, replay_epochs=1, num_mini_batches=2, micro_batch_size=2)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    minibatches: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for epoch, minibatch, _, rows in plan.schedule():
        seen[epoch] += rows.tolist()
        minibatches[epoch].add(minibatch)
    assert sorted(seen[0]) == list(range(16))  # every row, once
    assert sorted(seen[1]) == sorted(seen[2]) == [0, 1, 2, 3]  # the fresh rows, once each
    assert all(len(m) == 2 for m in minibatches.values())  # each epoch keeps its minibatch count
    assert plan.micro_batches_per_epoch() == (8, 2, 2) and plan.stat_slots() == 4


def test_every_epoch_holds_every_row_by_default_as_before():
    np.random.seed(1)
    plan = EpochPlan(num_rows=12, num_fresh=4, epochs=2, replay_epochs=2, num_mini_batches=1, micro_batch_size=4)
    np.random.seed(1)
    expected = [np.random.permutation(12) for _ in range(2)]  # one permutation per epoch, as TRL draws them
    np.random.seed(1)
    rows = [r for _, _, _, r in plan.schedule()]
    assert [r.tolist() for r in rows] == [list(p[i : i + 4]) for p in expected for i in (0, 4, 8)]


@pytest.mark.parametrize(
    ("trained", "epochs"), [(0, 0.0), (4, 0.5), (8, 1.0), (9, 1.5), (10, 2.0), (11, 2.5), (12, 3.0)]
)
def test_progress_counts_epochs_of_different_sizes(trained, epochs):
    progress = UpdateProgress(micro_batches_per_epoch=(8, 2, 2))
    for _ in range(trained):
        progress.add(valid_tokens=1)
    progress.keep()
    assert progress.epochs == epochs and progress.trained_tokens == trained


def test_replayed_rows_cost_replay_epochs_passes(tmp_path, tiny):
    args = tiny_config(tmp_path, **REPLAY, total_episodes=40, num_ppo_epochs=4, replay_epochs=1)
    trainer = make_trainer(tiny, args, make_digits_dataset(40), reward_model=None, reward_funcs=digits_reward)
    updates: list[list[tuple[int, int]]] = []  # per update, (fresh rows, replayed rows) per micro-batch
    loss, update = trainer.micro_batch_loss, trainer.ppo_update

    def counting_loss(batch, rows):
        replayed = int((rows >= batch.num_fresh).sum())
        updates[-1].append((len(rows) - replayed, replayed))
        return loss(batch, rows)

    def recording_update(batch):
        updates.append([])
        return update(batch)

    trainer.micro_batch_loss, trainer.ppo_update = counting_loss, recording_update
    trainer.train()
    log = trainer.state.log_history[-1]
    mixed = [passes for passes in updates if any(replayed for _, replayed in passes)]
    assert mixed and log["replay/episodes"] == 8
    for passes in mixed:  # 4 fresh rows in each of 4 epochs, 8 replayed rows in the first
        assert sum(f for f, _ in passes) == 4 * 4 and sum(r for _, r in passes) == 8 and len(passes) == 3 + 3
    assert log["update/ppo_epochs"] == 4


def test_update_averages_cover_the_trained_micro_batches_only(tmp_path, tiny):
    # replay_epochs=1 trains 6 of the update's 12 statistics slots: averaging the empty ones in halved every mean
    args = tiny_config(tmp_path, **REPLAY, total_episodes=40, num_ppo_epochs=4, replay_epochs=1)
    trainer = make_trainer(tiny, args, make_digits_dataset(40), reward_model=None, reward_funcs=digits_reward)
    trainer.train()
    replayed = [log for log in trainer.state.log_history if log.get("replay/episodes")]
    assert replayed
    for log in replayed:
        assert 0.9 < log["val/ratio"] < 1.1 and log["val/ratio_var"] < 0.01  # pi / pi_old of a small step


def test_replay_epochs_must_fit_the_epochs(tmp_path):
    with pytest.raises(ValueError, match=r"`replay_epochs` must be at most `num_ppo_epochs`=2; got replay_epochs=3"):
        ReplayPPOConfig(output_dir=str(tmp_path), num_ppo_epochs=2, replay_epochs=3)
    with pytest.raises(ValueError, match="replay_epochs"):
        ReplayPPOConfig(output_dir=str(tmp_path), replay_epochs=0)
