"""The trainer: the phased driver (`ReplayPPOTrainer`), the parts it holds, its config and the config's
checks, and the PPO base it builds on (TRL 1.12's, or this package's on TRL 1.13+)."""

from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.driver import ReplayPPOTrainer

__all__ = ["ReplayPPOConfig", "ReplayPPOTrainer"]
