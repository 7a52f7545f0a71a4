"""trl_replay_ppo: TRL's PPOTrainer with staleness-aware prioritized experience replay."""

from trl_replay_ppo.config import ReplayPPOConfig
from trl_replay_ppo.trainer import PhasedPPOTrainer

ReplayPPOTrainer = PhasedPPOTrainer

__all__ = ["PhasedPPOTrainer", "ReplayPPOConfig", "ReplayPPOTrainer"]
