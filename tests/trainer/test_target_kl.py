"""`target_kl`: the k3 statistic over valid tokens, checked before each optimizer step, against TRL's diluted one."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import make_trainer, snapshot, tiny_config, tokenized_prompts
from trl_replay_ppo.core.episodes import INVALID_LOGPROB, EpisodeBatch
from trl_replay_ppo.core.kl import KLEarlyStop, k3_kl_sum
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def k3(delta: float) -> float:
    """k3 of one token whose log-prob moved by ``delta`` (new - old), by hand."""
    return math.exp(delta) - 1 - delta


def test_k3_sum_counts_valid_tokens_only():
    new = torch.tensor([[0.5, -1.0, 7.0], [0.0, 2.0, 3.0]])
    old = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -4.0]])
    padding = torch.tensor([[False, False, True], [False, True, True]])
    kl_sum, tokens = k3_kl_sum(new, old, padding)
    assert tokens.item() == 3
    assert kl_sum.item() == pytest.approx(k3(0.5) + k3(-1.0) + k3(0.0))


def test_k3_sum_weighs_replayed_tokens_by_their_importance_weights():
    # Row 0 fresh (weights 1); row 1 replayed: a token the old policy had all but ruled out (r = 9,
    # k3 about 8,100) weighs its tiny importance weight, so it cannot swamp the estimate.
    new = torch.tensor([[0.5, -1.0], [9.0, 0.2]])
    old = torch.zeros(2, 2)
    padding = torch.tensor([[False, False], [False, True]])
    weights = torch.tensor([[1.0, 1.0], [1e-4, 0.7]])
    kl_sum, weight = k3_kl_sum(new, old, padding, weights)
    assert weight.item() == pytest.approx(2 + 1e-4)  # the padded token's weight does not count
    assert kl_sum.item() == pytest.approx(k3(0.5) + k3(-1.0) + 1e-4 * k3(9.0))
    unweighted, tokens = k3_kl_sum(new, old, padding)
    assert unweighted / tokens > 2_000 > 10 * kl_sum / weight


def test_the_stop_reads_the_token_weighted_window_over_ranks():
    reduced = []

    def doubled(window):  # two ranks holding the same window: the sums double, the mean does not move
        reduced.append(window.clone())
        return 2 * window

    stop = KLEarlyStop(target_kl=0.1, all_reduce_sum=doubled)
    stop.add(torch.tensor(1.0), torch.tensor(10))  # mean 0.1 over 10 tokens
    stop.add(torch.tensor(3.0), torch.tensor(10))  # mean 0.3 over 10 tokens
    assert stop.exceeded()  # (1 + 3) / 20 = 0.2 > 0.15; the mean of the micro-batch means would be 0.2 too
    assert stop.last == pytest.approx(0.2) and reduced[0].tolist() == [4.0, 20.0]
    stop.add(torch.tensor(0.5), torch.tensor(1))  # a new window: one token of KL 0.5 ...
    stop.add(torch.tensor(0.0), torch.tensor(9))  # ... among 10 tokens: 0.05, under the threshold
    assert not stop.exceeded() and stop.last == pytest.approx(0.05)


# Four responses of six tokens with 6, 3, 2 and 1 valid ones: half the tokens are padding.
LENGTHS = [6, 3, 2, 1]
DELTA = 0.6  # every valid token's log-prob under the current policy is this much above the batch's


def crafted_batch(trainer) -> EpisodeBatch:
    """A batch whose stored log-probs sit exactly ``DELTA`` below the current policy's on every valid token."""
    tokenizer, pad = trainer.processing_class, trainer.processing_class.pad_token_id
    queries = torch.tensor([tokenizer("12=")["input_ids"]] * len(LENGTHS))
    responses = torch.full((len(LENGTHS), 6), pad)
    for row, length in enumerate(LENGTHS):
        responses[row, :length] = torch.tensor(tokenizer("3456789")["input_ids"][:length])
    zeros = torch.zeros(len(LENGTHS), 6)
    batch = EpisodeBatch(
        query_responses=torch.cat([queries, responses], 1),
        context_length=queries.shape[1],
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.tensor([1.0, -1.0, 0.5, 0.0]),
        source_scores=torch.zeros(len(LENGTHS), 1),
        sequence_lengths=torch.tensor(LENGTHS) - 1,
        num_fresh=len(LENGTHS),
    )
    current, values = trainer.runner.logprobs_and_values(batch)
    batch.logprobs = torch.masked_fill(current - DELTA, batch.padding_mask, INVALID_LOGPROB)
    batch.ref_logprobs, batch.values = current, values
    assert int((~batch.padding_mask).sum()) == sum(LENGTHS) == 12
    return batch


@pytest.mark.parametrize(("target_kl", "stops"), [(0.1, True), (0.2, False)])
def test_two_minibatches_with_accumulation_and_padding_stop_on_the_real_kl(tmp_path, tiny, target_kl, stops):
    # 4 rows, 2 minibatches of 1 micro-batch of 2 rows, 2 accumulation steps: one optimizer step per epoch,
    # and TRL's statistic averages padding in (TRL 1.12 also averages in 2 empty slots per epoch).
    args = tiny_config(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_mini_batches=2,
        num_ppo_epochs=4,
        total_episodes=4,
        target_kl=target_kl,
        learning_rate=1e-2,
    )
    # Without a stop, SGD at rate 0 keeps the policy put, so every check reads the crafted statistic.
    params = list(tiny["policy"].parameters()) + list(tiny["value_model"].parameters())
    optimizers = (None, None) if stops else (torch.optim.SGD(params, lr=0.0), None)
    trainer = make_trainer(tiny, args, tokenized_prompts(tiny["tokenizer"], ["12="] * 4), optimizers=optimizers)
    batch = trainer.compute_advantages(crafted_batch(trainer))
    before = snapshot(trainer.model)
    stats = trainer.ppo_update(batch)
    progress = trainer.update_progress

    real_kl = k3(DELTA)  # 0.2221: the same on every valid token
    assert progress.early_stop_kl == pytest.approx(real_kl, rel=1e-4)
    # TRL's statistic: 0.5 * DELTA^2 on valid tokens, averaged with the padding (half the tokens): 0.18 / 2 =
    # 0.09 in each of the epoch's 2 slots, under either threshold.
    assert stats["written"][0].all()
    trl_epoch_kl = stats["approxkl"][0].mean().item()
    assert trl_epoch_kl == pytest.approx(0.5 * DELTA**2 * 12 / 24, rel=1e-3)
    assert trl_epoch_kl < 1.5 * target_kl
    if stops:  # 0.222 > 0.15: the first step is dropped, before it changes a weight
        assert real_kl > 1.5 * target_kl
        assert progress.epochs == 0 and progress.trained_tokens == 0
        assert trainer.optimizer_steps.grad_norms == []
        assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())
        assert all(torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    else:  # 0.222 < 0.3: every epoch runs, one step each
        assert (
            progress.epochs == 4 and progress.trained_tokens == 4 * 12 and len(trainer.optimizer_steps.grad_norms) == 4
        )


def test_a_mid_epoch_stop_counts_the_trained_share_and_is_logged(tmp_path, tiny):
    # One update of 4 rows, two steps per epoch (2 minibatches of 2 rows, no accumulation) and a target no real
    # step stays under: the first step is taken (KL ~0 before it), the second is checked after it and dropped.
    args = tiny_config(
        tmp_path,
        num_mini_batches=2,
        num_ppo_epochs=3,
        total_episodes=4,
        target_kl=1e-12,
        learning_rate=1e-2,
    )
    trainer = make_trainer(tiny, args, make_digits_dataset(4), reward_model=None, reward_funcs=digits_reward)
    trainer.train()
    (log,) = trainer.state.log_history
    assert log["update/ppo_epochs"] == 0.5 and log["policy/early_stop_kl"] > 1.5e-12
    assert len(trainer.optimizer_steps.grad_norms) == 1
    assert 0 < log["efficiency/trained_tokens"] <= 2 * args.response_length  # the 2 rows of the kept step


def test_without_target_kl_nothing_is_checked_or_logged(tmp_path, tiny):
    args = tiny_config(tmp_path, num_ppo_epochs=2, total_episodes=4)
    trainer = make_trainer(tiny, args, make_digits_dataset(4), reward_model=None, reward_funcs=digits_reward)
    trainer.train()
    (log,) = trainer.state.log_history
    assert log["update/ppo_epochs"] == 2 and "policy/early_stop_kl" not in log
