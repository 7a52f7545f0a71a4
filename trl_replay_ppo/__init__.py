"""trl_replay_ppo: PPO for language models with experience replay, a drop-in for TRL's PPOTrainer.

The public names are imported when first used (as TRL does), so ``import trl_replay_ppo`` and the
command line's ``--help`` do not wait for torch, transformers and TRL to load.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

from trl_replay_ppo.integrations.version import package_version

if TYPE_CHECKING:
    from trl_replay_ppo.checkpointing.directories import CheckpointFormatError
    from trl_replay_ppo.checkpointing.ownership import OutputDirInUseError
    from trl_replay_ppo.checkpointing.state_files import StateFileError
    from trl_replay_ppo.checkpointing.writer import CheckpointWriteError
    from trl_replay_ppo.rewards.calls import RewardFunctionError
    from trl_replay_ppo.trainer import ReplayPPOConfig, ReplayPPOTrainer

    PPOTrainerWithReplay = ReplayPPOTrainer

__version__ = package_version()

_PUBLIC = {  # public name -> the module that defines it
    "CheckpointFormatError": "trl_replay_ppo.checkpointing.directories",
    "CheckpointWriteError": "trl_replay_ppo.checkpointing.writer",
    "OutputDirInUseError": "trl_replay_ppo.checkpointing.ownership",
    "ReplayPPOConfig": "trl_replay_ppo.trainer",
    "ReplayPPOTrainer": "trl_replay_ppo.trainer",
    "RewardFunctionError": "trl_replay_ppo.rewards.calls",
    "StateFileError": "trl_replay_ppo.checkpointing.state_files",
}
_ALIASES = {"PPOTrainerWithReplay": "ReplayPPOTrainer"}  # the name users of the three-tier PPO design know

__all__ = [
    "CheckpointFormatError",
    "CheckpointWriteError",
    "OutputDirInUseError",
    "PPOTrainerWithReplay",
    "ReplayPPOConfig",
    "ReplayPPOTrainer",
    "RewardFunctionError",
    "StateFileError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "PhasedPPOTrainer":
        warnings.warn(
            "`PhasedPPOTrainer` is now `ReplayPPOTrainer` (replay off with `use_replay_buffer=False`); the old name "
            "will be removed in 0.3.",
            FutureWarning,
            stacklevel=2,
        )
        return __getattr__("ReplayPPOTrainer")
    target = _ALIASES.get(name, name)
    if target not in _PUBLIC:
        raise AttributeError(f"module 'trl_replay_ppo' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[target]), target)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
