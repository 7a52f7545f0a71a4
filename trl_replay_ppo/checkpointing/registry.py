"""`StateRegistry`: every piece of state a checkpoint holds beyond weights, optimizer and schedule, by name.

A part that must survive a resume has ``state_dict()`` (a tree of dicts, lists, scalars, strings and
tensors) and ``load_state_dict(state)``, and is registered under a name, as shared (the same on every
rank, in ``ppo_state.json``) or per rank (``rank_<i>.safetensors``). Before anything is loaded, a saved
state must have the structure of the part's own ``state_dict()`` (`validation.conform`) and pass the
part's ``check_state_dict(state)`` where it has one (a ``ValueError`` saying what is inconsistent).
Entries are saved and restored in the order they were registered; `RNGState` is registered last, so
that loading the others (which may consume random numbers) cannot change the restored generators.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch

from trl_replay_ppo.checkpointing.directories import CheckpointFormatError
from trl_replay_ppo.checkpointing.validation import conform, damaged


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RNGState:
    """The process's python, numpy and torch (CPU and CUDA: one state per device, none without CUDA) generators."""

    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.random.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.random.get_rng_state(),
            "cuda": cuda,
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Each generator's state is one its generator accepts (tried on throwaway generators)."""
        try:
            random.Random().setstate(state["python"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"the python RNG state is not one ({error})") from error
        try:
            np.random.RandomState().set_state(state["numpy"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"the numpy RNG state is not one ({error})") from error
        if state["cuda"] and len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"{len(state['cuda'])} CUDA RNG states for {torch.cuda.device_count()} devices")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["cpu"])
        if state["cuda"] and torch.cuda.is_available():
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

    def check(self, scope: str, states: Any, source: str) -> None:
        """Refuse saved ``states`` whose entries are not this run's, or are damaged (before anything is loaded)."""
        if not isinstance(states, dict):
            raise damaged(source, "its state is not a mapping of named entries")
        expected, saved = set(self.entries[scope]), set(states)
        if expected != saved:
            raise CheckpointFormatError(
                f"{source} holds the state of {sorted(saved)} but this run keeps {sorted(expected)}: it was written "
                "by another version of trl_replay_ppo or with other settings. Resume with the version and settings "
                "that wrote it, or start a new run."
            )
        for name, part in self.entries[scope].items():
            conform(states[name], part.state_dict(), f"{source}: {name}")
            check = getattr(part, "check_state_dict", None)
            if check is None:
                continue
            try:
                check(states[name])
            except (ValueError, TypeError, KeyError) as error:
                raise damaged(f"{source}: {name}", str(error)) from error

    def load(self, scope: str, states: dict[str, Any]) -> None:
        """Load every entry of ``scope`` from ``states`` (checked with `check` first)."""
        for name, part in self.entries[scope].items():
            part.load_state_dict(states[name])
