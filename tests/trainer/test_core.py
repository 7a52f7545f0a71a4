"""PPO core: gradient clipping, entropy bonus, adaptive KL, non-finite guard, bf16."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from tests.helpers import changed, digit_prompts, make_trainer, snapshot, tiny_config, tokenized_prompts
from trl_replay_ppo import ReplayPPOConfig
from trl_replay_ppo.core.kl import AdaptiveKLController
from trl_replay_ppo.core.losses import entropy_from_logits
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


def _record_clip_calls(trainer) -> list[float]:
    """Wrap `trainer.optimizer_step` to record the pre-clip norm of the gradients, computed by hand."""
    norms = []
    optimizer_step = trainer.optimizer_step

    def recording_step():
        grads = [p.grad.detach().flatten() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).double().norm().item())
        optimizer_step()

    trainer.optimizer_step = recording_step
    return norms


@pytest.mark.parametrize("accumulation", [1, 2])
def test_clipping_bounds_the_update_and_logs_the_true_norm(tmp_path, tiny, accumulation):
    max_norm = 0.05
    args = tiny_config(
        tmp_path, max_grad_norm=max_norm, gradient_accumulation_steps=accumulation, total_episodes=4 * accumulation * 3
    )
    # Enough prompts that no update reaches the end of the dataloader, where accelerate (and so TRL)
    # steps the optimizer after every micro-batch.
    dataset = tokenized_prompts(tiny["tokenizer"], digit_prompts(64))
    params = list(tiny["policy"].parameters()) + list(tiny["value_model"].parameters())
    sgd = torch.optim.SGD(params, lr=1.0)  # with SGD(lr=1) the applied update is exactly -clipped gradient
    trainer = make_trainer(tiny, args, dataset, optimizers=(sgd, None))
    hand_norms = _record_clip_calls(trainer)
    steps = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        step(*a, **k)
        update = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(trainer.model.parameters(), before, strict=True)]
        )
        steps.append(update.norm().item())

    trainer.optimizer.step = recording_step
    trainer.train()

    assert len(hand_norms) == 3 == len(steps)  # one clip and one step per update (1 epoch, 1 minibatch)
    logged = [log["policy/grad_norm"] for log in trainer.state.log_history]
    assert logged == pytest.approx(hand_norms, rel=1e-4)  # float32 reduction order vs float64
    assert all(norm > max_norm for norm in hand_norms)  # clipping was active
    assert all(norm <= max_norm * (1 + 1e-4) for norm in steps)
    assert all(norm > 0 for norm in logged)


def test_entropy_bonus_raises_entropy_on_a_fixed_batch(tmp_path, tiny_dirs):
    from trl_replay_ppo.tasks.tiny import load_tiny_models

    entropies = {}
    for coef in (0.0, 0.5):
        tiny = load_tiny_models(tiny_dirs)
        with torch.no_grad():  # sharpen the near-uniform random policy so entropy has room to grow
            tiny["policy"].lm_head.weight.mul_(8)
        args = tiny_config(tmp_path, entropy_coef=coef, per_device_train_batch_size=8, learning_rate=3e-3)
        trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
        trainer.begin_training()
        torch.manual_seed(0)
        batch = trainer.compute_advantages(trainer.rollout(trainer.next_prompts()))
        for _ in range(10):
            trainer.ppo_update(batch)
        with torch.no_grad():
            output = trainer.model.policy(input_ids=batch.query_responses)
            logits = output.logits[:, batch.context_length - 1 : -1]
            entropies[coef] = entropy_from_logits(logits).mean().item()
    assert entropies[0.5] > entropies[0.0] + 0.1, entropies


def test_adaptive_kl_moves_towards_target_on_a_synthetic_sequence():
    controller = AdaptiveKLController(kl_coef=0.1, target=1.0, horizon=100)
    controller.update(current_kl=5.0, num_episodes=10)
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    high = controller.value
    controller.update(current_kl=0.9, num_episodes=10)  # error -0.1, inside the clip
    assert controller.value == pytest.approx(high * (1 - 0.1 * 10 / 100))
    lower = controller.value
    controller.update(current_kl=0.0, num_episodes=10)  # error -1, clipped at -0.2
    assert controller.value == pytest.approx(lower * (1 - 0.2 * 10 / 100))
    state = controller.state_dict()
    other = AdaptiveKLController(kl_coef=1.0, target=1.0, horizon=100)
    other.load_state_dict(state)
    assert other.value == controller.value


@pytest.mark.parametrize(("target", "direction"), [(1e-4, 1), (1e4, -1)])
def test_adaptive_kl_in_a_real_run(tmp_path, tiny, target, direction):
    args = tiny_config(
        tmp_path,
        kl_controller="adaptive",
        kl_estimator="k3",  # non-negative per token, so "KL above a tiny target" holds once the policy moves
        kl_coef=0.1,
        kl_target=target,
        kl_horizon=100,
        total_episodes=48,
    )
    trainer = make_trainer(tiny, args, make_digits_dataset(16), reward_model=None, reward_funcs=digits_reward)
    trainer.train()
    coefs = [log["objective/kl_coef"] for log in trainer.state.log_history]
    kls = [log["objective/kl"] for log in trainer.state.log_history]
    assert coefs[0] == 0.1
    assert (trainer.kl_ctl.value - 0.1) * direction > 0
    for kl, before, after in zip(kls, coefs, [*coefs[1:], trainer.kl_ctl.value], strict=True):
        assert (after - before) * (kl - target) > 0  # up when KL > target, down when below


def test_non_finite_loss_skips_the_step(tmp_path, tiny):
    args = tiny_config(tmp_path, total_episodes=12, max_grad_norm=1.0)
    trainer = make_trainer(tiny, args, tokenized_prompts(tiny["tokenizer"], digit_prompts(12)))
    loss_fn = trainer.micro_batch_loss
    calls = []

    def poisoned(batch, rows):
        loss, stats = loss_fn(batch, rows)
        calls.append(1)
        return (loss * math.nan if len(calls) == 2 else loss), stats

    trainer.micro_batch_loss = poisoned
    weights_per_update = []

    class Snapshots(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            weights_per_update.append(snapshot(trainer.model))

    trainer.add_callback(Snapshots())
    trainer.train()
    logs = trainer.state.log_history
    assert [log["update/skipped_steps"] for log in logs] == [0, 1, 1]
    assert math.isnan(logs[1]["policy/grad_norm"])
    assert changed(weights_per_update[0], trainer.model)  # update 3 stepped
    first, second = weights_per_update[0], weights_per_update[1]
    assert all(torch.equal(first[k], second[k]) for k in first)  # update 2 was skipped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_repeated_non_finite_steps_stop_training(tmp_path, tiny):
    args = tiny_config(tmp_path, total_episodes=40, max_skipped_steps=3)
    trainer = make_trainer(tiny, args, tokenized_prompts(tiny["tokenizer"], digit_prompts(12)))
    loss_fn = trainer.micro_batch_loss

    def infinite(batch, rows):
        loss, stats = loss_fn(batch, rows)
        return loss * math.inf, stats

    trainer.micro_batch_loss = infinite
    before = snapshot(trainer.model)
    with pytest.raises(RuntimeError, match=r"3 consecutive optimizer steps .*`max_skipped_steps`=3"):
        trainer.train()
    assert not changed(before, trainer.model)


def test_bf16_trains_on_cpu(tmp_path, tiny):
    args = tiny_config(tmp_path, bf16=True, total_episodes=8, num_ppo_epochs=2)
    before = snapshot(tiny["policy"])
    trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert changed(before, trainer.model.policy)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert all(math.isfinite(v) for v in trainer.state.log_history[-1].values() if isinstance(v, float))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("entropy_coef", -0.1, "entropy_coef"),
        ("kl_controller", "pid", "kl_controller"),
        ("kl_target", 0.0, "kl_target"),
        ("kl_horizon", -1.0, "kl_horizon"),
        ("max_grad_norm", -1.0, "max_grad_norm"),
        ("max_skipped_steps", 0, "max_skipped_steps"),
    ],
)
def test_bad_core_settings_are_named(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        ReplayPPOConfig(output_dir=str(tmp_path), **{field: value})


def test_weights_driven_non_finite_stop_training_and_keep_the_last_good_checkpoint(tmp_path, tiny):
    from safetensors.torch import load_file

    args = tiny_config(tmp_path, total_episodes=24, save_strategy="steps", save_steps=1)
    trainer = make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
    step = trainer.optimizer.step
    calls = []

    def poisoning_step(*a, **k):  # the third step writes inf into a weight, as an exploding update would
        step(*a, **k)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")

    trainer.optimizer.step = poisoning_step
    with pytest.raises(
        RuntimeError, match=r"non-finite .* optimizer step of update 3; training stopped before saving"
    ):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(
        torch.isfinite(t).all() for t in load_file(out / "checkpoint-2" / "trainable_params.safetensors").values()
    )


def test_a_right_padding_tokenizer_is_warned_and_prompts_left_padded(tmp_path, tiny, caplog):
    tiny["tokenizer"].padding_side = "right"
    trainer = make_trainer(
        tiny, tiny_config(tmp_path, total_episodes=4), tokenized_prompts(tiny["tokenizer"], ["1=", "234="] * 2)
    )
    assert "prompts are left-padded for generation" in caplog.text
    prompts = trainer.next_prompts()["input_ids"]
    pad = tiny["tokenizer"].pad_token_id
    assert (prompts[:, -1] != pad).all() and (prompts == pad).any()  # padding on the left of the short prompts
    assert tiny["tokenizer"].padding_side == "right"  # the user's tokenizer is left as it was
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
