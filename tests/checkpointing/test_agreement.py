"""Every rank reads its own files of a checkpoint; the worst outcome over the ranks is every rank's outcome."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import trl_replay_ppo.checkpointing.reader as reader
from trl_replay_ppo import CheckpointFormatError, StateFileError

pytestmark = pytest.mark.trl112  # also runs in the TRL 1.12 job


def rank(own_outcome: Exception | None, other_outcome: int, monkeypatch):
    """This rank with its own read's outcome, beside another rank whose outcome code is ``other_outcome``."""

    def read(trainer, path):
        if own_outcome is not None:
            raise own_outcome
        return "contents"

    def gather(tensor):  # two ranks: this one's outcome, then the other's
        return torch.cat([tensor, torch.tensor([other_outcome])])

    monkeypatch.setattr(reader, "read_checkpoint", read)
    return SimpleNamespace(accelerator=SimpleNamespace(gather=gather, device="cpu"))


def test_all_ranks_read_it(monkeypatch):
    assert reader.read_agreed(rank(None, 0, monkeypatch), Path("checkpoint-8")) == "contents"


def test_damage_on_another_rank_is_damage_here_too(monkeypatch):
    with pytest.raises(StateFileError, match="another rank's files of this checkpoint are damaged"):
        reader.read_agreed(rank(None, 1, monkeypatch), Path("checkpoint-8"))


def test_a_refusal_anywhere_outranks_damage_so_no_rank_falls_back_alone(monkeypatch):
    damaged_here = StateFileError("rank_0.safetensors is damaged")
    with pytest.raises(ValueError, match="another rank refused this checkpoint") as refused:
        reader.read_agreed(rank(damaged_here, 2, monkeypatch), Path("checkpoint-8"))
    assert not isinstance(refused.value, StateFileError)  # not skipped as damage: resolve stops on every rank
    with pytest.raises(CheckpointFormatError, match="format 2"):
        reader.read_agreed(rank(CheckpointFormatError("format 2"), 1, monkeypatch), Path("checkpoint-8"))
