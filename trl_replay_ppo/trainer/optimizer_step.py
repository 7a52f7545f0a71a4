"""`OptimizerStep`: clipping, the non-finite guards and the step itself, at each gradient-sync point."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

logger = logging.getLogger(__name__)


class OptimizerStep:
    """Clip, skip a step whose gradients are non-finite, else step; then check the weights stayed finite.

    Owns the pre-clip gradient norms of the current update (``policy/grad_norm``) and the run's
    skip counters (``update/skipped_steps``, saved with every checkpoint).

    Args:
        model: the prepared policy + critic (what accelerate clips under sharding or loss scaling).
        optimizer: the prepared optimizer.
        accelerator: the trainer's.
        trained_weights: every trainable parameter (clipped in one fused call when nothing is sharded).
        max_grad_norm: clip threshold; 0 or None disables clipping (the norm is still measured).
        max_skipped_steps: consecutive non-finite steps after which training stops with an error.
        steps_in_backward: DeepSpeed's engine steps inside backward, so a non-finite norm cannot skip there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        accelerator: Accelerator,
        trained_weights: list[torch.nn.Parameter],
        *,
        max_grad_norm: float | None,
        max_skipped_steps: int,
        steps_in_backward: bool,
    ):
        self.model = model
        self.optimizer = optimizer
        self.accelerator = accelerator
        self.trained_weights = trained_weights
        self.max_norm = max_grad_norm if max_grad_norm else math.inf
        self.max_skipped_steps = max_skipped_steps
        self.steps_in_backward = steps_in_backward
        sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        self.plain_clipping = accelerator.scaler is None and not sharded  # neither loss-scaled nor sharded
        self.grad_norms: list[float] = []  # pre-clip norms of this update's steps
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.attempted_here, self.skipped_here = 0, 0  # steps of this process's part of the run (never saved)

    def begin_update(self) -> None:
        self.grad_norms = []

    def __call__(self, update: int) -> None:
        """At a gradient-sync point of update number ``update``: clip, skip if anything is non-finite, else step.

        A non-finite norm (from a non-finite loss or gradient on any rank, since gradients are
        already all-reduced) skips the step on every rank alike; too many in a row stop training.
        """
        if self.plain_clipping:
            # Accelerate's wrapper walks every parameter and checks each one for a scaler and
            # sharding on each call; with neither, one fused clip of the cached list does the same.
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_weights, self.max_norm, foreach=True)
        else:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        self.attempted_here += 1
        if math.isfinite(grad_norm) or self.steps_in_backward:
            self.optimizer.step()
            self.check_weights_finite(update)
            self.grad_norms.append(grad_norm)
            self.consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self.skipped_here += 1
            self.consecutive_skips += 1
            logger.warning(
                "Skipped an optimizer step: non-finite loss or gradient (norm=%s); %d skipped so far.",
                grad_norm,
                self.skipped_steps,
            )
            if self.consecutive_skips >= self.max_skipped_steps:
                raise RuntimeError(
                    f"{self.consecutive_skips} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(`max_skipped_steps`={self.max_skipped_steps}). Lower `learning_rate`, set `max_grad_norm`, "
                    "or check the reward for NaN/inf values."
                )
        self.optimizer.zero_grad()

    def warn_if_mostly_skipped(self, learning_rate: float) -> None:
        """At the end of training: warn when this run skipped more optimizer steps than it applied, so the policy
        returned is mostly untrained, with the likely causes."""
        applied = self.attempted_here - self.skipped_here
        if self.skipped_here <= applied:
            return
        logger.warning(
            "Training skipped %d of its %d optimizer steps as non-finite (%d applied): the returned policy is mostly "
            "untrained. Likely causes: rewards too large for float32 (rescale them; a warning says which source "
            "gave them), or a `learning_rate`=%g too high (lower it, or set `max_grad_norm`).",
            self.skipped_here,
            self.attempted_here,
            applied,
            learning_rate,
        )

    def check_weights_finite(self, update: int) -> None:
        """After an optimizer step: stop, naming the update, if any trainable weight became NaN/inf.

        One fused norm over the trainable weights (agreed over ranks). The error stops training
        before anything is saved, so the newest checkpoint stays the last good one; no copy of the
        model is kept. Under DeepSpeed, its loss scaler skips fp16 overflow steps, but not a step
        that writes non-finite weights from finite gradients (a huge learning rate): this check covers it.
        """
        norm = torch.nn.utils.get_total_norm(self.trained_weights, foreach=True)
        norm = norm.reshape(1).to(self.accelerator.device)
        if torch.isfinite(self.accelerator.gather(norm)).all():
            return
        raise RuntimeError(
            f"The weights became non-finite (NaN/inf) in the optimizer step of update {update}; "
            "training stopped before saving anything, so the newest checkpoint is the last good one. Lower "
            "`learning_rate` (or set `max_grad_norm`) and resume with `resume_from_checkpoint=True`."
        )

    def metrics(self) -> dict[str, float]:
        """``policy/grad_norm`` (mean pre-clip norm of this update's steps, this rank) and ``update/skipped_steps``."""
        return {
            "policy/grad_norm": float(np.mean(self.grad_norms or [math.nan])),
            "update/skipped_steps": self.skipped_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])
