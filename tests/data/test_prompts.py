"""Prompt batches: repeated per completion, and prepared under the seed every rank shares."""

from __future__ import annotations

import torch

from trl_replay_ppo.data.prompts import repeat_prompts, seeded_preparation


def test_every_prompt_and_its_columns_repeat_in_a_row():
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "answer": ["a", "b"]}
    repeated = repeat_prompts(batch, 3)
    assert repeated["input_ids"].tolist() == [[1, 2]] * 3 + [[3, 4]] * 3
    assert repeated["answer"] == ["a", "a", "a", "b", "b", "b"]
    assert repeat_prompts(batch, 1) is batch


def test_preparation_draws_from_the_shared_seed_then_returns_to_the_rank_seed():
    with seeded_preparation(seed=7, local_seed=11):
        inside = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))  # what every rank draws while preparing
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))  # then this rank's own stream
