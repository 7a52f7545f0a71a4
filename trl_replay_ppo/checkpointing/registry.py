"""`StateRegistry`: every piece of state a checkpoint holds beyond weights, optimizer and schedule, by name.

A part that must survive a resume has ``state_dict()`` (a tree of dicts, lists, scalars, strings and
tensors) and ``load_state_dict(state)``, and is registered under a name, as shared (the same on every
rank, in ``ppo_state.json``) or per rank (``rank_<i>.safetensors``). Entries are saved and restored
in the order they were registered; `RNGState` is registered last, so that loading the others (which
may consume random numbers) cannot change the restored generators.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch

from trl_replay_ppo.checkpointing.directories import CheckpointFormatError


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RNGState:
    """The process's python, numpy and torch (CPU and CUDA) random generators."""

    def state_dict(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.random.set_rng_state_all(state["cuda"])


class StateRegistry:
    """Named shared and per-rank entries; `state` and `load` for one scope at a time."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Stateful]] = {"shared": {}, "rank": {}}

    def register(self, name: str, part: Stateful, *, per_rank: bool = False) -> None:
        scope = self.entries["rank" if per_rank else "shared"]
        if name in self.entries["shared"] or name in self.entries["rank"]:
            raise ValueError(f"A state named {name!r} is already registered.")
        scope[name] = part

    def state(self, scope: str) -> dict[str, Any]:
        """``{name: state_dict()}`` of the ``scope`` ('shared' or 'rank') entries, in registration order."""
        return {name: part.state_dict() for name, part in self.entries[scope].items()}

    def check(self, scope: str, states: dict[str, Any], source: str) -> None:
        """Refuse saved ``states`` whose entries are not this run's (before anything is loaded)."""
        expected, saved = set(self.entries[scope]), set(states)
        if expected != saved:
            raise CheckpointFormatError(
                f"{source} holds the state of {sorted(saved)} but this run keeps {sorted(expected)}: it was written "
                "by another version of trl_replay_ppo or with other settings. Resume with the version and settings "
                "that wrote it, or start a new run."
            )

    def load(self, scope: str, states: dict[str, Any]) -> None:
        """Load every entry of ``scope`` from ``states`` (checked with `check` first)."""
        for name, part in self.entries[scope].items():
            part.load_state_dict(states[name])
