"""Training survives what PPO can handle: no sampled padding, no 0/0 whitening, collapse seen coming."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.core.advantages import whiten_advantages
from trl_replay_ppo.core.masking import masked_whiten
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


def _favour(tiny, token_id: int, bias: float) -> None:
    """Add ``bias`` to the policy's logit of ``token_id`` at every position (generation and training)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += bias
        return output

    tiny["policy"].lm_head.register_forward_hook(hook)


def _trainer(tiny, tmp_path, **overrides):
    args = tiny_config(tmp_path, **{"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, **overrides})
    return make_trainer(
        tiny,
        args,
        make_digits_dataset(16),
        reward_model=None,
        reward_funcs=digits_reward,
        eval_dataset=make_digits_dataset(8, seed=1),
    )


def test_a_policy_that_favours_the_pad_token_never_emits_it(tmp_path, tiny):
    pad = tiny["tokenizer"].pad_token_id
    _favour(tiny, pad, 8.0)  # the pad token takes almost all the probability mass
    trainer = _trainer(tiny, tmp_path)
    trainer.begin_training()
    batch = trainer.rollout(trainer.next_prompts())
    assert not (batch.responses == pad).any()  # sampled: every position is a real token
    assert (batch.sequence_lengths == batch.responses.shape[1] - 1).all()
    evaluator = trainer.evaluator
    _, responses, _, _ = evaluator.generate_and_score(
        next(iter(trainer.eval_dataloader)), evaluator.generation_kwargs(), trainer.state
    )
    assert not (responses == pad).any()  # greedy evaluation would pick pad everywhere

    # The log-probs describe the distribution that was sampled: the pad token's mass renormalised away.
    model = trainer.accelerator.unwrap_model(trainer.model).policy
    suppressed = trainer.runner.response_logprobs(model, batch.query_responses, batch.context_length)
    trainer.runner.suppressed_token_id = None
    unsuppressed = trainer.runner.response_logprobs(model, batch.query_responses, batch.context_length)
    assert (suppressed - unsuppressed > 1.0).all()  # log(1 / (1 - p_pad)) with p_pad close to 1


def test_the_first_minibatch_ratio_is_one_with_pad_suppression(tmp_path, tiny):
    _favour(tiny, tiny["tokenizer"].pad_token_id, 8.0)
    trainer = _trainer(tiny, tmp_path)
    trainer.begin_training()
    batch = trainer.compute_advantages(trainer.rollout(trainer.next_prompts()))
    _, stats = trainer.micro_batch_loss(batch, np.arange(len(batch)))
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["approxkl"].item() < 1e-10


def test_greedy_evaluation_still_stops_at_eos_when_pad_is_eos(tmp_path, tiny):
    tokenizer = tiny["tokenizer"]
    tokenizer.pad_token = tokenizer.eos_token
    _favour(tiny, tokenizer.eos_token_id, 8.0)  # greedy decoding picks eos first
    trainer = _trainer(tiny, tmp_path, response_length=6, stop_token="eos")
    evaluator = trainer.evaluator
    prompts = next(iter(trainer.eval_dataloader))
    queries = prompts["input_ids"]
    query_responses, _ = trainer.runner.generate(queries, evaluator.generation_kwargs(), len(queries))
    # eos stays a legal token when it is also the pad token: every row stops after one token, not six.
    assert query_responses.shape[1] == queries.shape[1] + 1
    assert (query_responses[:, -1] == tokenizer.eos_token_id).all()
    metrics = trainer.evaluate()
    assert metrics["eval_response_length"] == 0 and metrics["eval_prompts"] == 8


@pytest.mark.parametrize(
    ("values", "valid", "expected", "whitened"),
    [
        ([1.0, 2.0, 3.0], [False, False, False], [1.0, 2.0, 3.0], False),  # nothing valid: unchanged
        ([5.0, 2.0, 3.0], [True, False, False], [5.0, 2.0, 3.0], False),  # one token: no variance, unchanged
        # two tokens 1 and 3: mean 2, unbiased variance ((1)^2 + (1)^2) / (2 - 1) = 2
        ([1.0, 3.0, 9.0], [True, True, False], [-(2**-0.5), 2**-0.5, 7 * 2**-0.5], True),
    ],
)
def test_whitening_by_hand(values, valid, expected, whitened):
    result, ok = masked_whiten(torch.tensor(values), ~torch.tensor(valid))
    assert ok is whitened
    torch.testing.assert_close(result, torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_advantage_whitening_with_one_token_keeps_finite_advantages():
    advantages = torch.tensor([[0.7, 0.0, 0.0], [0.0, 0.0, 0.0]])
    padding_mask = torch.tensor([[False, True, True], [True, True, True]])
    whitened, ok = whiten_advantages(advantages, padding_mask)
    assert not ok and torch.isfinite(whitened).all()
    assert whitened.tolist() == [[pytest.approx(0.7), 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_a_single_token_batch_trains_and_counts_the_fallback(tmp_path, tiny):
    _favour(tiny, tiny["tokenizer"].eos_token_id, 30.0)  # every response is the stop token alone
    trainer = _trainer(tiny, tmp_path, per_device_train_batch_size=1, total_episodes=3, stop_token="eos")
    trainer.train()
    logs = trainer.state.log_history
    assert [log["update/whiten_fallbacks"] for log in logs] == [1, 2, 3]
    assert all(log["update/skipped_steps"] == 0 for log in logs)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_collapse_is_warned_before_it_is_fatal(tmp_path, tiny, caplog):
    _favour(tiny, tiny["tokenizer"].eos_token_id, 30.0)
    trainer = _trainer(tiny, tmp_path, total_episodes=24, stop_token="eos")
    with caplog.at_level(logging.WARNING, logger="trl_replay_ppo"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "responses of update" in r.getMessage()]
    assert len(warnings) == 1  # once, not every update
    assert "100% of the responses of update 1 are empty" in warnings[0] and "learning_rate" in warnings[0]
    assert [log["rollout/empty_fraction"] for log in trainer.state.log_history] == [1.0, 1.0, 1.0]
