"""The model runner: which token is suppressed, the generation settings, and the response positions of a forward."""

from __future__ import annotations

import torch

from tests.helpers import make_trainer, tiny_config, tokenized_prompts
from trl_replay_ppo.models.forwards import response_positions
from trl_replay_ppo.models.runner import suppressed_token


def test_the_pad_token_is_suppressed_only_when_asked_and_distinct_from_eos():
    assert suppressed_token(True, pad_token_id=0, eos_token_id=1, vocab_rows=8) == 0
    assert suppressed_token(False, pad_token_id=0, eos_token_id=1, vocab_rows=8) is None
    assert suppressed_token(True, pad_token_id=1, eos_token_id=1, vocab_rows=8) is None  # eos must stay a legal stop
    assert suppressed_token(True, pad_token_id=8, eos_token_id=1, vocab_rows=8) is None  # added past the rows


def test_one_place_builds_sampling_and_greedy_settings(tmp_path, tiny):
    prompts = tokenized_prompts(tiny["tokenizer"], ["1="] * 4)
    trainer = make_trainer(tiny, tiny_config(tmp_path, temperature=0.7), prompts)
    runner, pad = trainer.runner, tiny["tokenizer"].pad_token_id
    sampling = runner.generation_kwargs(5, 0.7)
    assert sampling == {
        "max_new_tokens": 5,
        "suppress_tokens": [pad],
        "temperature": 0.7 + 1e-7,
        "top_k": 0,
        "top_p": 1.0,
        "do_sample": True,
    }
    assert runner.generation_kwargs(5, None) == {"max_new_tokens": 5, "suppress_tokens": [pad], "do_sample": False}
    assert trainer.collector.generation_kwargs == trainer.runner.generation_kwargs(6, 0.7)  # the rollout's


def test_response_positions_are_the_ones_that_predict_the_response():
    per_position = torch.arange(10).reshape(1, 10)  # 4 prompt + 6 response tokens
    assert response_positions(per_position, 4).tolist() == [[3, 4, 5, 6, 7, 8]]


def test_train_forward_matches_the_no_grad_log_probs(tmp_path, tiny):
    trainer = make_trainer(tiny, tiny_config(tmp_path), tokenized_prompts(tiny["tokenizer"], ["12=", "3="] * 2))
    batch = trainer.rollout(trainer.next_prompts())
    logits, values = trainer.runner.train_forward(batch.query_responses, batch.context_length)
    assert logits.shape[:2] == values.shape == batch.responses.shape
    logprobs, recomputed_values = trainer.runner.logprobs_and_values(batch)
    valid = ~batch.padding_mask
    chosen = torch.log_softmax(logits, -1).gather(-1, batch.responses.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen[valid], logprobs[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values[~batch.padding_mask_p1], recomputed_values[~batch.padding_mask_p1])
