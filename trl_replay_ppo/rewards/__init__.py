"""Rewards: the built-in reward functions (TRL's GRPO contract), calling reward functions, and the scorer
that combines them with a reward model.

``trl_replay_ppo.rewards`` names the built-in functions, as the README and the command line use them.
"""

from trl_replay_ppo.rewards.builtin import (
    REWARD_FUNCTIONS,
    completion_text,
    format_reward,
    gsm8k_accuracy,
    gsm8k_reference,
    last_number,
    parse_number,
)
from trl_replay_ppo.rewards.calls import RewardFunc, RewardFunctionError

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFunc",
    "RewardFunctionError",
    "completion_text",
    "format_reward",
    "gsm8k_accuracy",
    "gsm8k_reference",
    "last_number",
    "parse_number",
]
