"""trl_replay_ppo: PPO for language models with experience replay, a drop-in for TRL's PPOTrainer."""

from __future__ import annotations

import warnings

from trl_replay_ppo.checkpointing.directories import CheckpointFormatError
from trl_replay_ppo.checkpointing.ownership import OutputDirInUseError
from trl_replay_ppo.checkpointing.state_files import StateFileError
from trl_replay_ppo.checkpointing.writer import CheckpointWriteError
from trl_replay_ppo.rewards.calls import RewardFunctionError
from trl_replay_ppo.trainer import ReplayPPOConfig, ReplayPPOTrainer

PPOTrainerWithReplay = ReplayPPOTrainer  # the name users of the three-tier PPO design know

__all__ = [
    "CheckpointFormatError",
    "CheckpointWriteError",
    "OutputDirInUseError",
    "PPOTrainerWithReplay",
    "ReplayPPOConfig",
    "ReplayPPOTrainer",
    "RewardFunctionError",
    "StateFileError",
]


def __getattr__(name: str):
    if name == "PhasedPPOTrainer":
        warnings.warn(
            "`PhasedPPOTrainer` is now `ReplayPPOTrainer` (replay off with `use_replay_buffer=False`); the old name "
            "will be removed in 0.3.",
            FutureWarning,
            stacklevel=2,
        )
        return ReplayPPOTrainer
    raise AttributeError(f"module 'trl_replay_ppo' has no attribute {name!r}")
