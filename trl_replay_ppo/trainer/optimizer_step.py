"""`OptimizerStep`: clipping, the non-finite guards and the step itself, at each gradient-sync point.

A mixin of `trl_replay_ppo.trainer.driver.ReplayPPOTrainer`; it reads the trainer's ``model``, ``optimizer``,
``accelerator``, ``args``, ``counters`` and ``state``.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate.utils import DistributedType

logger = logging.getLogger(__name__)


class OptimizerStep:
    """``optimizer_step`` (clip, skip non-finite, step) and ``check_weights_finite`` after each step."""

    def optimizer_step(self) -> None:
        """At a gradient-sync point: clip, skip the step if anything is non-finite, else step.

        The pre-clip global norm is recorded for ``policy/grad_norm``. A non-finite norm (from a
        non-finite loss or gradient on any rank, since gradients are already all-reduced) skips the
        step on every rank alike; too many in a row stop training.
        """
        args, accelerator, counters = self.args, self.accelerator, self.counters
        max_norm = args.max_grad_norm if args.max_grad_norm else math.inf
        if self._plain_clipping():
            # Accelerate's wrapper walks every parameter and checks each one for a scaler and
            # sharding on each call; with neither, one fused clip of the cached list does the same.
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_weights(), max_norm, foreach=True)
        else:
            grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if math.isfinite(grad_norm) or self.is_deepspeed_enabled:
            self.optimizer.step()
            self.check_weights_finite()
            self._grad_norms.append(grad_norm)
            counters.consecutive_skips = 0
        else:
            counters.skipped_steps += 1
            counters.consecutive_skips += 1
            logger.warning(
                "Skipped an optimizer step: non-finite loss or gradient (norm=%s); %d skipped so far.",
                grad_norm,
                counters.skipped_steps,
            )
            if counters.consecutive_skips >= args.max_skipped_steps:
                raise RuntimeError(
                    f"{counters.consecutive_skips} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(`max_skipped_steps`={args.max_skipped_steps}). Lower `learning_rate`, set `max_grad_norm`, "
                    "or check the reward for NaN/inf values."
                )
        self.optimizer.zero_grad()

    def trained_weights(self) -> list[torch.nn.Parameter]:
        """``trainable_parameters()`` as a list, made once (the set never changes during training)."""
        if getattr(self, "_trained_weights", None) is None:
            self._trained_weights = list(self.trainable_parameters().values())
        return self._trained_weights

    def _plain_clipping(self) -> bool:
        """True when gradients are neither loss-scaled (fp16) nor sharded (DeepSpeed/FSDP)."""
        accelerator = self.accelerator
        sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        return accelerator.scaler is None and not sharded

    def check_weights_finite(self) -> None:
        """After an optimizer step: stop, naming the update, if any trainable weight became NaN/inf.

        One fused norm over the trainable weights (agreed over ranks). The error stops training
        before anything is saved, so the newest checkpoint stays the last good one; no copy of the
        model is kept. Under DeepSpeed, its loss scaler skips fp16 overflow steps, but not a step
        that writes non-finite weights from finite gradients (a huge learning rate): this check covers it.
        """
        norm = torch.nn.utils.get_total_norm(self.trained_weights(), foreach=True)
        norm = norm.reshape(1).to(self.accelerator.device)
        if torch.isfinite(self.accelerator.gather(norm)).all():
            return
        raise RuntimeError(
            f"The weights became non-finite (NaN/inf) in the optimizer step of update {self.state.global_step + 1}; "
            "training stopped before saving anything, so the newest checkpoint is the last good one. Lower "
            "`learning_rate` (or set `max_grad_norm`) and resume with `resume_from_checkpoint=True`."
        )
