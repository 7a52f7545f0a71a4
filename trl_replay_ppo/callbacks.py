"""Callbacks this package adds to TRL's set."""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

PROGRESS_KEYS = {"objective/scores": "score", "objective/kl": "kl", "eval_reward": "eval"}


class RewardProgressCallback(ProgressCallback):
    """transformers' progress bar, showing score and KL on the bar instead of printing every log dict.

    Training logs update the bar's postfix; evaluation results are printed as one line.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        postfix = {short: f"{logs[key]:.3g}" for key, short in PROGRESS_KEYS.items() if key in logs}
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=False)
        if any(key.startswith("eval_") for key in logs):
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()}
            self.training_bar.write(f"step {state.global_step}: {shown}")
