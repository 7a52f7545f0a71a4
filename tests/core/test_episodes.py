"""Episode batches: padding, row selection, the round trip through the replay buffer, the prompt stream's state."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch, from_episodes, pad_episodes, to_episodes
from trl_replay_ppo.data.prompts import PromptStream

PAD = 0


def batch() -> EpisodeBatch:
    """Two episodes: prompt [0, 5] (left-padded) + response [7, 8, 0], and prompt [5, 6] + response [9, 0, 0]."""
    return EpisodeBatch(
        query_responses=torch.tensor([[0, 5, 7, 8, 0], [5, 6, 9, 0, 0]]),
        context_length=2,
        logprobs=torch.tensor([[-0.1, -0.2, INVALID_LOGPROB], [-0.3, INVALID_LOGPROB, INVALID_LOGPROB]]),
        ref_logprobs=torch.tensor([[-0.4, -0.5, INVALID_LOGPROB], [-0.6, INVALID_LOGPROB, INVALID_LOGPROB]]),
        values=torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]]),
        scores=torch.tensor([1.0, 0.0]),
        source_scores=torch.tensor([[1.0], [0.0]]),
        sequence_lengths=torch.tensor([1, 0]),
        num_fresh=2,
    )


def test_masks_and_score_positions():
    b = batch()
    assert b.padding_mask.tolist() == [[False, False, True], [False, True, True]]
    assert b.score_index.tolist() == [2, 1]  # the token after the last
    assert b.padding_mask_p1.tolist() == [[False, False, False], [False, False, True]]


def test_pad_episodes_by_hand():
    padded = pad_episodes(batch(), context_length=3, response_length=5, pad_token_id=PAD)
    assert padded.query_responses.tolist() == [[0, 0, 5, 7, 8, 0, 0, 0], [0, 5, 6, 9, 0, 0, 0, 0]]
    assert torch.equal(padded.logprobs[0, :3], batch().logprobs[0]) and padded.logprobs[0, 3:].tolist() == [1.0, 1.0]
    assert torch.equal(padded.values[1, :3], batch().values[1]) and padded.values[1, 3:].tolist() == [0.0, 0.0]
    assert padded.score_index.tolist() == [2, 1]  # padding never moves a score
    assert padded.padding_mask.tolist() == [[False, False, True, True, True], [False, True, True, True, True]]


def test_select_slices_every_per_episode_tensor():
    b = batch()
    b.advantages = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    second = b.select(slice(1, 2))
    assert len(second) == 1 and second.num_fresh == 1
    assert second.query_responses.tolist() == [[5, 6, 9, 0, 0]] and second.scores.tolist() == [0.0]
    assert second.advantages.tolist() == [[3.0, 0.0, 0.0]] and second.score_index.tolist() == [1]


def test_episodes_round_trip_through_storage():
    b = batch()
    episodes = to_episodes(b, range(2), PAD)
    assert episodes[0].query.tolist() == [5] and episodes[0].response.tolist() == [7, 8]
    assert episodes[1].query.tolist() == [5, 6] and episodes[1].response.tolist() == [9]
    rebuilt = from_episodes(episodes, PAD, torch.device("cpu"))
    assert rebuilt.query_responses.tolist() == [[0, 5, 7, 8, 0], [5, 6, 9, 0, 0]]  # longest response + 1 column
    assert (
        rebuilt.logprobs.tolist() == b.logprobs.tolist() and rebuilt.ref_logprobs.tolist() == b.ref_logprobs.tolist()
    )
    assert rebuilt.sequence_lengths.tolist() == [1, 0] and rebuilt.scores.tolist() == [1.0, 0.0]
    assert rebuilt.num_fresh == 0 and torch.equal(rebuilt.values, torch.zeros(2, 3))


def test_prompt_stream_state_round_trip():
    torch.manual_seed(0)
    loader = DataLoader(list(range(10)), batch_size=3, shuffle=True, drop_last=True)
    stream = PromptStream(loader)
    for _ in range(4):  # into the second epoch
        stream.next()
    state = stream.state_dict()
    expected = [stream.next().tolist() for _ in range(5)]
    restored = PromptStream(DataLoader(list(range(10)), batch_size=3, shuffle=True, drop_last=True))
    restored.load_state_dict(state)
    assert (restored.epoch, restored.position) == (1, 1)
    assert [restored.next().tolist() for _ in range(5)] == expected
