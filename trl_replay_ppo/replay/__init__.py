"""Experience replay: storage, samplers, eviction, and the buffer that composes them."""

from trl_replay_ppo.replay.buffer import ReplayBuffer
from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.sampler import PrioritizedSampler, UniformSampler
from trl_replay_ppo.replay.storage import Episode, EpisodeStorage
from trl_replay_ppo.replay.sumtree import SumTree

__all__ = [
    "Episode",
    "EpisodeStorage",
    "EvictionPolicy",
    "PrioritizedSampler",
    "ReplayBuffer",
    "SumTree",
    "UniformSampler",
]
