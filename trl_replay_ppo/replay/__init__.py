"""Experience replay: storage, samplers, eviction, the buffer that composes them, and the trainer's component."""

from trl_replay_ppo.replay.buffer import ReplayBuffer
from trl_replay_ppo.replay.eviction import EvictionPolicy
from trl_replay_ppo.replay.experience import ExperienceReplay, ReplayForwards
from trl_replay_ppo.replay.sampler import PrioritizedSampler, Sampler, UniformSampler
from trl_replay_ppo.replay.schedules import LinearSchedule
from trl_replay_ppo.replay.storage import EpisodeStorage
from trl_replay_ppo.replay.sumtree import SumTree

__all__ = [
    "EpisodeStorage",
    "EvictionPolicy",
    "ExperienceReplay",
    "LinearSchedule",
    "PrioritizedSampler",
    "ReplayBuffer",
    "ReplayForwards",
    "Sampler",
    "SumTree",
    "UniformSampler",
]
