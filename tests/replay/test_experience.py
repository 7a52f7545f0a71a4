"""`ExperienceReplay` on its own, with a fake `forwards`: augmenting, recording, weights, terminal values."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trl_replay_ppo.core.advantages import compute_gae, shaped_rewards
from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch, append_replayed, from_episodes, to_episodes
from trl_replay_ppo.core.losses import value_loss
from trl_replay_ppo.core.masking import masked_whiten
from trl_replay_ppo.replay import ExperienceReplay

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job

PAD = 0
VOCAB = 100  # token ids of the episodes built here lie below it


def config(**overrides):
    values = {
        "replay_buffer_size": 16,
        "use_priority_sampling": False,
        "priority_alpha": 1.0,
        "priority_staleness_decay": 1.0,
        "priority_beta": 1.0,
        "staleness_threshold": 100,
        "max_replay_reuse": 4,
        "replayed_per_update": 2,
        "min_replay_size": 2,
        "replay_importance_cap": 2.0,
        "replay_min_ess": 0.0,
        "num_total_batches": 10,
        "local_batch_size": 2,
    }
    return SimpleNamespace(**{**values, **overrides})


def fresh_batch(lengths: list[int], width: int, score: float = 1.0) -> EpisodeBatch:
    """Rows of 2 prompt tokens and ``lengths`` response tokens, right-padded to ``width``."""
    rows = len(lengths)
    query_responses = torch.full((rows, 2 + width), PAD)
    query_responses[:, :2] = torch.tensor([5, 6])
    logprobs = torch.full((rows, width), INVALID_LOGPROB)
    for i, n in enumerate(lengths):
        query_responses[i, 2 : 2 + n] = torch.arange(7, 7 + n)
        logprobs[i, :n] = -1.0
    batch = EpisodeBatch(
        query_responses=query_responses,
        context_length=2,
        logprobs=logprobs,
        ref_logprobs=logprobs.clone(),
        values=torch.zeros(rows, width),
        scores=torch.full((rows,), score),
        source_scores=torch.full((rows, 1), score),
        sequence_lengths=torch.tensor(lengths) - 1,
        num_fresh=rows,
    )
    batch.raw_advantages = torch.ones(rows, width)
    return batch


class FakeForwards:
    """The current policy gives every token log-prob -0.5 (behaviour was -1.0); the critic gives 0.9 everywhere.

    ``other_rank_ess`` plays another rank's value in `min_over_ranks`.
    """

    def __init__(self, other_rank_ess: float = 1.0):
        self.calls = []
        self.other_rank_ess = other_rank_ess
        self.reduced: list[float] = []

    def min_over_ranks(self, value: float) -> float:
        self.reduced.append(value)
        return min(value, self.other_rank_ess)

    def logprobs_and_values(self, batch: EpisodeBatch):
        self.calls.append(len(batch))
        logprobs = torch.masked_fill(torch.full(batch.logprobs.shape, -0.5), batch.padding_mask, INVALID_LOGPROB)
        values = torch.masked_fill(torch.full(batch.values.shape, 0.9), batch.padding_mask_p1, 0.0)
        return logprobs, values


def test_augment_weights_and_recomputed_values():
    replay = ExperienceReplay.from_config(config(), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    replay.record(fresh_batch([2, 3], width=3), version=0)
    forwards = FakeForwards()
    batch = replay.augment(fresh_batch([1, 1], width=1), forwards, version=1, fewest_over_ranks=len(replay))
    assert len(batch) == 4 and batch.num_fresh == 2 and forwards.calls == [2]
    assert torch.equal(batch.token_weights[:2], torch.ones_like(batch.token_weights[:2]))
    replayed = slice(2, None)
    valid = ~batch.padding_mask[replayed]
    # min(exp(-0.5 - (-1.0)), 2.0) = e^0.5 for every replayed token, row weight 1 (uniform)
    assert torch.allclose(batch.token_weights[replayed][valid], torch.tensor(np.exp(0.5), dtype=torch.float32))
    assert torch.equal(batch.row_weights, torch.ones(4))
    # Replayed values are the critic's, at every response token and on the token after the last.
    assert torch.all(batch.values[replayed][~batch.padding_mask_p1[replayed]] == 0.9)
    assert replay.metrics(2)["replay/episodes"] == 2


def test_importance_weights_are_truncated_at_the_cap():
    # Every replayed token has ratio e^0.5 = 1.65: kept at 1.65 under a cap of 2, truncated to 1.5 under 1.5.
    weights = {}
    for cap in (2.0, 1.5):
        replay = ExperienceReplay.from_config(
            config(replay_importance_cap=cap), seed=0, pad_token_id=PAD, vocab_size=VOCAB
        )
        replay.record(fresh_batch([2, 3], width=3), version=0)
        batch = replay.augment(fresh_batch([1, 1], width=1), FakeForwards(), version=1, fewest_over_ranks=2)
        weights[cap] = batch.token_weights[2:][~batch.padding_mask[2:]]
    assert torch.allclose(weights[2.0], torch.tensor(np.exp(0.5), dtype=torch.float32))
    assert torch.equal(weights[1.5], torch.full_like(weights[1.5], 1.5))


def test_low_ess_on_any_rank_skips_the_replayed_rows_on_every_rank():
    replay = ExperienceReplay.from_config(config(replay_min_ess=0.5), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    replay.record(fresh_batch([2, 3], width=3), version=0)
    # This rank's weights are all equal (ESS 1); another rank's ESS is 0.2 < 0.5: nobody replays.
    forwards = FakeForwards(other_rank_ess=0.2)
    batch = replay.augment(fresh_batch([1, 1], width=1), forwards, version=1, fewest_over_ranks=2)
    assert forwards.reduced == [1.0] and len(batch) == 2 and batch.token_weights is None
    metrics = replay.metrics(2)
    assert metrics["replay/episodes"] == 0 and metrics["replay/low_ess_skips"] == 1
    assert metrics["replay/ess_behaviour"] == 1.0
    # Above the threshold everywhere, the rows are replayed.
    batch = replay.augment(fresh_batch([1, 1], width=1), FakeForwards(0.9), version=1, fewest_over_ranks=2)
    assert len(batch) == 4 and replay.metrics(2)["replay/low_ess_skips"] == 1
    state = replay.state_dict()
    restored = ExperienceReplay.from_config(config(replay_min_ess=0.5), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    restored.load_state_dict(state)
    assert restored.low_ess_skips == 1


def test_a_fresh_row_filling_its_width_keeps_its_score_when_padded_wider():
    replay = ExperienceReplay.from_config(config(), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    replay.record(fresh_batch([3, 3], width=3), version=0)
    batch = replay.augment(fresh_batch([1, 1], width=1), FakeForwards(), version=1, fewest_over_ranks=2)
    # The fresh rows filled their width of 1: the score stays on their only token, nothing after it is valid.
    assert batch.score_index[:2].tolist() == [0, 0] and batch.padding_mask_p1[:2, 1:].all()
    # The replayed rows (3 tokens) were padded to 3 + 1: the score sits after the last token, with the critic's value.
    assert batch.score_index[2:].tolist() == [3, 3] and batch.responses.shape[1] == 4
    assert torch.all(batch.values[2:, 3] == 0.9)


def test_terminal_value_by_hand():
    # A replayed episode of 2 tokens, padded to the width of a 4-token fresh batch. With gamma = 1, lam = 0.95,
    # no KL and the critic at 0.5, 0.6 and 0.9 (on the token after the last), the score 1 sits at index 2:
    # A2 = 1 - 0.9 = 0.1, A1 = (0.9 - 0.6) + 0.95 * 0.1 = 0.395, A0 = (0.6 - 0.5) + 0.95 * 0.395 = 0.47525.
    fresh = fresh_batch([4], width=4)
    stored = to_episodes(fresh_batch([2], width=2), range(1), PAD)
    replayed = from_episodes(stored, PAD, torch.device("cpu"))
    replayed.proximal_logprobs = replayed.logprobs
    replayed.values = torch.tensor([[0.5, 0.6, 0.9]])
    replayed.token_weights, replayed.row_weights = torch.ones(1, 3), torch.ones(1)
    batch = append_replayed(fresh, replayed, PAD)
    rewards, _ = shaped_rewards(torch.zeros(2, 4), batch.scores, batch.score_index, kl_coef=0.0)
    advantages, _ = compute_gae(rewards, batch.values, gamma=1.0, lam=0.95)
    assert advantages[1, :3].tolist() == pytest.approx([0.47525, 0.395, 0.1])
    assert batch.score_index.tolist() == [3, 2]  # the fresh row filled its width: its score stays on its last token


def test_replay_waits_for_every_rank():
    replay = ExperienceReplay.from_config(config(), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    replay.record(fresh_batch([2, 2], width=2), version=0)
    forwards = FakeForwards()
    batch = replay.augment(fresh_batch([1, 1], width=1), forwards, version=1, fewest_over_ranks=1)
    assert len(batch) == 2 and forwards.calls == []  # this rank holds 2, another only 1: nobody replays


def test_record_marks_updates_and_stores():
    replay = ExperienceReplay.from_config(
        config(use_priority_sampling=True), seed=0, pad_token_id=PAD, vocab_size=VOCAB
    )
    replay.record(fresh_batch([2, 3], width=3), version=0)
    batch = replay.augment(fresh_batch([1, 1], width=1), FakeForwards(), version=1, fewest_over_ranks=2)
    batch.raw_advantages = torch.cat([torch.ones(2, 4), torch.full((2, 4), 3.0)])
    replay.record(batch, version=1)
    storage = replay.buffer.storage
    assert len(replay) == 4 and storage.replays[:2].sum() == 2
    assert replay.buffer.sampler.priority[batch.replay_ids].tolist() == [3.0, 3.0]  # mean |A| at this use
    assert storage.version.tolist()[:4] == [0, 0, 1, 1]


def test_idle_replay_is_warned_once(caplog):
    replay = ExperienceReplay.from_config(config(min_replay_size=8), seed=0, pad_token_id=PAD, vocab_size=VOCAB)
    assert replay.warmup_updates == 4  # 8 episodes at 2 per update
    with caplog.at_level(logging.WARNING, logger="trl_replay_ppo"):
        for version in range(20):
            replay.augment(fresh_batch([1, 1], width=1), FakeForwards(), version, fewest_over_ranks=3)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "Replay has not run for 15 updates" in messages[0]
    assert "holds 3 episodes" in messages[0] and "= 8" in messages[0]


def test_value_loss_weighted_by_hand():
    vpred, returns = torch.zeros(2, 1), torch.tensor([[1.0], [0.0]])
    loss, _ = value_loss(vpred, vpred, returns, torch.zeros(2, 1, dtype=torch.bool), 10.0, torch.tensor([0.5, 1.5]))
    assert loss.item() == pytest.approx(0.5 * (0.5 * 1.0 + 1.5 * 0.0) / 2)
    # The minimiser of the weighted loss is the weighted mean of the returns: with prioritized-replay weights,
    # the success rate of the population the rows were drawn from (1 of 10 here), not of the skewed sample (0.5).
    sample_returns = torch.tensor([[1.0]] * 5 + [[0.0]] * 5)  # successes drawn 9x as often as their share
    weights = torch.tensor([1 / 9] * 5 + [1.0] * 5)
    no_padding = torch.zeros(10, 1, dtype=torch.bool)

    def gradient_at(value: float) -> float:
        v = torch.tensor(value, requires_grad=True)
        vpred = v.expand(10, 1)
        loss, _ = value_loss(vpred, vpred.detach(), sample_returns, no_padding, 1e6, weights)
        loss.backward()
        return v.grad.item()

    assert gradient_at(0.1) == pytest.approx(0.0, abs=1e-7)
    assert gradient_at(0.5) > 0.1  # the unweighted minimiser is not one


def test_weighted_whitening_by_hand():
    values, valid = torch.tensor([1.0, 3.0, 7.0]), torch.tensor([True, True, False])
    whitened, ok = masked_whiten(values, ~valid, weights=torch.tensor([1.0, 3.0, 5.0]))
    # weighted mean (1 + 9) / 4 = 2.5; weighted variance (2.25 + 3 * 0.25) / 4 * 2 / (2 - 1) = 1.5
    assert ok and whitened[:2].tolist() == pytest.approx([-1.5 / 1.5**0.5, 0.5 / 1.5**0.5], rel=1e-5)
