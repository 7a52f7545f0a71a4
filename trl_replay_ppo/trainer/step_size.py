"""`AdaptiveStepSize`: a learning rate that follows how far each update moves the policy (``adaptive_lr_kl``).

The rule is the KL-adaptive schedule of rl_games and rsl_rl, applied once per update: after an update
whose mean KL(old || new) per token exceeds twice the target, the rate is divided by ``factor``; below
half the target, multiplied by it; in between it stays. The KL is Schulman's k3 estimate of each trained
token (the ``kl_sum`` statistic `KLEarlyStop` reads), measured at its micro-batch's forward, so it is the
drift the update's steps built up, averaged over the update's tokens (replayed ones weighted by their
importance weights, `k3_kl_sum`) and summed over ranks (every rank takes the same decision).

The scale multiplies the LR schedule itself: a `LambdaLR` recomputes each group's rate from its base rate
at every step, so a rate set on the optimizer would be overwritten; wrapping its ``lr_lambdas`` makes
``base_lr * schedule(step) * scale`` the rate. The wrappers are plain functions, which `LambdaLR` leaves
out of its state dict; the scale is saved with the trainer's own state instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class AdaptiveStepSize:
    """Scales a `LambdaLR` schedule by a factor adapted to each update's policy KL.

    Args:
        scheduler: the trainer's LR scheduler (a `torch.optim.lr_scheduler.LambdaLR`, as every
            `transformers.get_scheduler` type is); its ``lr_lambdas`` are wrapped in place.
        target_kl: the KL (nats per token) an update should move the policy by.
        factor: the multiplier of one adjustment (> 1).
        max_scale: the scale stays within [1 / max_scale, max_scale] of the schedule.
        all_reduce_sum: sums a tensor over ranks (identity on one process).
    """

    def __init__(
        self,
        scheduler: Any,
        target_kl: float,
        factor: float,
        max_scale: float,
        all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    ):
        if not isinstance(getattr(scheduler, "lr_lambdas", None), list):
            raise TypeError(
                f"`adaptive_lr_kl` scales the LR schedule, which must be a `LambdaLR` (every `lr_scheduler_type` "
                f"is); the scheduler passed in `optimizers` is a {type(scheduler).__name__}. Pass a `LambdaLR`, or "
                "set `adaptive_lr_kl=None`."
            )
        self.target_kl, self.factor, self.max_scale = target_kl, factor, max_scale
        self.all_reduce_sum = all_reduce_sum
        self.scale = 1.0
        self.last_kl = 0.0  # nats per token, of the last update
        scheduler.lr_lambdas = [self._scaled(schedule) for schedule in scheduler.lr_lambdas]

    def _scaled(self, schedule: Callable[[int], float]) -> Callable[[int], float]:
        def scaled(step: int) -> float:
            return schedule(step) * self.scale

        return scaled

    def update(self, kl_sums: torch.Tensor, kl_weights: torch.Tensor) -> None:
        """After an update, from its micro-batches' k3 KL sums and token weights (any shape, this rank's)."""
        total = self.all_reduce_sum(torch.stack([kl_sums.detach().double().sum(), kl_weights.double().sum()]))
        kl_sum, tokens = total.tolist()
        self.last_kl = kl_sum / tokens if tokens > 0 else 0.0
        self.scale = self.next_scale(self.scale, self.last_kl)

    def next_scale(self, scale: float, kl: float) -> float:
        """The rule: ``scale`` after an update that moved the policy by ``kl`` nats per token."""
        if kl > 2 * self.target_kl:
            scale /= self.factor
        elif kl < self.target_kl / 2:
            scale *= self.factor
        return min(max(scale, 1 / self.max_scale), self.max_scale)

    def metrics(self) -> dict[str, float]:
        """``update/lr_scale`` (the factor on the schedule for the next update) and ``update/policy_kl``."""
        return {"update/lr_scale": self.scale, "update/policy_kl": self.last_kl}

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "last_kl": self.last_kl}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        scale = state["scale"]
        if not isinstance(scale, float) or not 1 / self.max_scale <= scale <= self.max_scale:
            raise ValueError(
                f"the saved learning-rate scale {scale!r} is not a number within [1/{self.max_scale:g}, "
                f"{self.max_scale:g}] (`adaptive_lr_max_scale`)"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.last_kl = float(state["scale"]), float(state["last_kl"])
