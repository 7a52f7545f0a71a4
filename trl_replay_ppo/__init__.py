"""trl_replay_ppo: TRL's PPOTrainer with staleness-aware prioritized experience replay."""

import os

# This package is built on `trl.experimental.ppo` on purpose (TRL 1.0-1.12 keep PPO there); its
# "experimental API" warning on every import says nothing actionable to our users.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl_replay_ppo.config import ReplayPPOConfig
from trl_replay_ppo.trainer import PhasedPPOTrainer, PPOTrainerWithReplay, ReplayPPOTrainer

__all__ = ["PPOTrainerWithReplay", "PhasedPPOTrainer", "ReplayPPOConfig", "ReplayPPOTrainer"]
