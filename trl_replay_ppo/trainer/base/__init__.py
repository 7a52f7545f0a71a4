"""The PPO base the trainer builds on: the one place that decides which.

On TRL 1.0-1.12, TRL's own ``trl.experimental.ppo.PPOConfig`` and ``PPOTrainer`` (so the phased loop
can be checked bit for bit against TRL's); on TRL 1.13 and later, which removed PPO, this package's
`trl_replay_ppo.trainer.base.config.PPOConfig` and `trl_replay_ppo.trainer.base.trainer.PPOTrainer`, which take the
same fields and constructor and set up training the same way.
"""

from __future__ import annotations

from trl_replay_ppo.integrations.compat import trl_ppo
from trl_replay_ppo.trainer.base.trainer import OnlineTrainerState

_TRL_PPO = trl_ppo()
if _TRL_PPO is not None:
    PPOConfig, PPOTrainer = _TRL_PPO
    BASE = "trl"
else:
    from trl_replay_ppo.trainer.base.config import PPOConfig
    from trl_replay_ppo.trainer.base.trainer import PPOTrainer

    BASE = "trl_replay_ppo"

__all__ = ["BASE", "OnlineTrainerState", "PPOConfig", "PPOTrainer"]
