"""The model runner: which token is suppressed, the generation settings, and the response positions of a forward."""

from __future__ import annotations

import torch

from tests.helpers import make_trainer, tiny_config, tokenized_prompts
from trl_replay_ppo.models.forwards import gather_logprobs, model_inputs, response_positions
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


def test_a_shared_value_head_costs_one_backbone_pass_and_changes_nothing(tmp_path, tiny):
    """Policy and shared critic read one pass, bitwise what two passes gave, in training and in replay's recompute."""
    args = tiny_config(tmp_path, shared_value_head=True)
    trainer = make_trainer(tiny, args, tokenized_prompts(tiny["tokenizer"], ["12=", "3="] * 2), value_model=None)
    runner, wrapper = trainer.runner, trainer.model
    torch.nn.init.normal_(wrapper.value_model.score.weight)  # a trained head: values that are not all 0
    batch = trainer.rollout(trainer.next_prompts())
    passes = []
    hook = wrapper.value_model.backbone.register_forward_hook(lambda *_: passes.append(1))
    logits, values = runner.train_forward(batch.query_responses, batch.context_length)
    logprobs, recomputed_values = runner.logprobs_and_values(batch)
    hook.remove()
    assert len(passes) == 2  # one per call
    inputs = model_inputs(batch.query_responses, tiny["tokenizer"].pad_token_id)
    with torch.no_grad():
        hidden = wrapper.value_model.backbone(**inputs, output_hidden_states=True).hidden_states[-1]
        separate_values = response_positions(wrapper.value_model.score(hidden), batch.context_length).squeeze(-1)
        separate_logits = runner.response_logits(wrapper.policy(**inputs).logits, batch.context_length)
    assert torch.equal(values.detach(), separate_values.float())
    assert torch.equal(logits.detach(), separate_logits)
    valid, valid_p1 = ~batch.padding_mask, ~batch.padding_mask_p1
    assert torch.equal(recomputed_values[valid_p1], separate_values.float()[valid_p1])
    assert torch.equal(logprobs[valid], gather_logprobs(separate_logits, batch.responses)[valid])
